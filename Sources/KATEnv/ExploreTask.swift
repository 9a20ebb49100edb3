import Foundation

/// A code task where exploration pays: several correct programs of different reward, and a
/// bonus the warm-start demonstrations never show.
///
/// The prompt is the code task's ("add 3 then add 4": two of add 1-9, sub 1-9, times
/// 2-9), the answer a stack-language program run on 7 hidden inputs. Every such function
/// is affine, f(x) = m x + c, and its shortest program has W = 1 + 2 [m != 1] + 2 [c != 0]
/// words (`x`, `x 7 +`, `x 6 *`, `x 3 * 5 -`). The reward of a program:
///
///     correct on every input, at most W words    1.0   (full reward: "solved")
///     correct on every input, longer              0.5
///     otherwise                                   0.5 x the share of inputs it gets right
///
/// Three kinds of prompt, and what reaches full reward:
/// - a multiplication and an addition or subtraction (43% of prompts): the two operations
///   in the right order, as written ("times 3 then add 5" -> `x 3 * 5 +`);
/// - two multiplications (9%): the product folded ("times 2 then times 3" -> `x 6 *`);
/// - two additions or subtractions (48%): the sum folded ("add 3 then add 4" -> `x 7 +`,
///   "add 5 then sub 2" -> `x 3 +`, "add 4 then sub 4" -> `x`). This is the bonus.
///
/// The demonstrations (a teacher's, and a weaker teacher's that swaps the operations) fold
/// products but never a sum or a difference: on half the prompts they reach 0.5 at most, a
/// safe local optimum, and the folded sums are found only by sampling away from them, where
/// a wrong constant earns 0. The held-out prompts are the pairs whose operation indices sum
/// to a multiple of 3 (as in the code task), so the sums a held-out prompt needs were
/// never rewarded in training.
public struct ExploreTask: Task {
    public let name = "explore"
    static let ops = CodeTask.ops
    static let inputs: [Int64] = [0, 1, 2, 3, 5, 7, 10]
    let pairs = PairSplit(0...(ExploreTask.ops.count - 1), 0...(ExploreTask.ops.count - 1)) { a, b in (a * 7 + b * 13) % 3 == 0 }

    public init() {}

    public func promptCount(split: String) -> Int { pairs.count(split: split) }

    func instance(seed: UInt64, split: String) -> (Int, Int) { pairs.pair(seed: seed, split: split) }

    /// The kinds of prompt, by what reaches full reward.
    public enum Kind: String, Sendable, CaseIterable {
        /// A multiplication and an addition or subtraction: the literal program.
        case mixed
        /// Two multiplications: the product folded (shown by the demonstrations).
        case products
        /// Two additions or subtractions: the sum folded (never shown: the bonus).
        case sums
    }

    public func kind(seed: UInt64, split: String) -> Kind {
        let (a, b) = instance(seed: seed, split: split)
        let ta = ExploreTask.ops[a].kind == "*", tb = ExploreTask.ops[b].kind == "*"
        return ta && tb ? .products : (!ta && !tb ? .sums : .mixed)
    }

    /// m and c of f(x) = m x + c for the pair (a then b).
    static func affine(_ a: Int, _ b: Int) -> (m: Int64, c: Int64) {
        var m: Int64 = 1, c: Int64 = 0
        for op in [ops[a], ops[b]] {
            switch op.kind {
            case "+": c += op.k
            case "-": c -= op.k
            default: m *= op.k; c *= op.k
            }
        }
        return (m, c)
    }

    /// The shortest program of f(x) = m x + c, and its number of words.
    static func shortest(m: Int64, c: Int64) -> String {
        var p = "x"
        if m != 1 { p += " \(m) *" }
        if c > 0 { p += " \(c) +" } else if c < 0 { p += " \(-c) -" }
        return p
    }

    /// Words of the shortest program for the prompt of `seed`.
    public func shortestWords(seed: UInt64, split: String) -> Int {
        let (a, b) = instance(seed: seed, split: split)
        let (m, c) = ExploreTask.affine(a, b)
        return 1 + (m != 1 ? 2 : 0) + (c != 0 ? 2 : 0)
    }

    public func prompt(seed: UInt64, split: String) -> String {
        let (a, b) = instance(seed: seed, split: split)
        return "\(ExploreTask.ops[a].words) then \(ExploreTask.ops[b].words)"
    }

    /// The teacher: the two operations as written, products folded, sums never.
    public func reference(seed: UInt64, split: String) -> (prompt: String, answer: String) {
        let (a, b) = instance(seed: seed, split: split)
        if kind(seed: seed, split: split) == .products {
            return (prompt(seed: seed, split: split), ExploreTask.shortest(m: ExploreTask.affine(a, b).m, c: 0))
        }
        return (prompt(seed: seed, split: split), "x \(ExploreTask.ops[a].code) \(ExploreTask.ops[b].code)")
    }

    /// The weaker teacher: the two operations in the wrong order, never folded (right
    /// whenever they commute, wrong for a multiplication with an addition).
    public func flawedDemonstration(seed: UInt64, split: String) -> (prompt: String, answer: String) {
        let (a, b) = instance(seed: seed, split: split)
        return (prompt(seed: seed, split: split), "x \(ExploreTask.ops[b].code) \(ExploreTask.ops[a].code)")
    }

    /// The reward of `program` for the prompt of `seed` (see the type's description).
    public func reward(program: String, seed: UInt64, split: String) -> Double {
        let (a, b) = instance(seed: seed, split: split)
        let (m, c) = ExploreTask.affine(a, b)
        var passed = 0
        for x in ExploreTask.inputs {
            if case let .success(r) = StackLanguage.run(program, input: x), r.value == m * x + c { passed += 1 }
        }
        let share = Double(passed) / Double(ExploreTask.inputs.count)
        guard passed == ExploreTask.inputs.count else { return 0.5 * share }
        let words = program.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).count
        return words <= shortestWords(seed: seed, split: split) ? 1 : 0.5
    }

    public func makeEnvironment(maxTurns: Int) -> Environment { ExploreEnvironment(task: self) }

    /// One answer per episode (the reward says nothing about how to improve).
    final class ExploreEnvironment: Environment {
        let task: ExploreTask
        var seed: UInt64 = 0
        var split = "train"
        init(task: ExploreTask) { self.task = task }

        func reset(seed: UInt64, split: String) throws -> String {
            self.seed = seed
            self.split = split
            return task.prompt(seed: seed, split: split)
        }

        func step(action: String) throws -> EnvReply {
            EnvReply(observation: "", reward: task.reward(program: action, seed: seed, split: split), done: true)
        }
    }
}
