import Foundation

/// A code task where exploration pays: several correct programs of different reward, and a
/// bonus the warm-start demonstrations never show.
///
/// The prompt is two operations, as in the code task ("add 3 then add 4": two of add 0-9,
/// sub 0-9, times 1-9, so 841 prompts), the answer a stack-language program run on 7
/// hidden inputs. Every such function is affine, f(x) = m x + c, and its shortest program
/// has W = 1 + 2 [m != 1] + 2 [c != 0] words (`x`, `x 7 +`, `x 6 *`, `x 3 * 5 -`). The
/// reward of a program:
///
///     correct on every input, at most W words    1.0   (full reward: "solved")
///     correct on every input, longer              0.5
///     otherwise                                   0.5 x the share of inputs it gets right
///
/// Five kinds of prompt, and what reaches full reward:
/// - an operation that changes nothing (add 0, sub 0, times 1) with any other (20% of
///   prompts): the other one alone ("add 0 then times 3" -> `x 3 *`, "times 1 then sub 0"
///   -> `x`). This is the bonus: no arithmetic, one decision to stop early;
/// - a multiplication and an addition or subtraction (34%): the two operations in the right
///   order, as written ("times 3 then add 5" -> `x 3 * 5 +`);
/// - two multiplications (8%): the product folded ("times 2 then times 3" -> `x 6 *`);
/// - two additions or two subtractions (19%): the sum folded ("add 3 then add 4" -> `x 7 +`);
/// - an addition and a subtraction (19%): the difference folded ("add 5 then sub 2" -> `x 3 +`,
///   "add 2 then sub 5" -> `x 3 -`).
///
/// The teacher folds products and sums and writes the others as they read; the weaker
/// teacher swaps the two operations and folds nothing. Neither ever drops an operation
/// that changes nothing, nor folds a difference: on those prompts the demonstrations reach
/// 0.5 at most, a safe local optimum, and a wrong attempt to shorten earns 0. The shortest
/// programs there are found only by sampling away from the demonstrations (the folds the
/// teacher shows teach that an answer may end after one operation), and a policy that
/// stops exploring early never finds them. The held-out prompts are the pairs whose
/// operation indices sum to a multiple of 3 (as in the code task).
public struct ExploreTask: Task {
    public let name = "explore"
    /// add 0-9, sub 0-9, times 1-9: the code task's operations and the three that change nothing.
    static let ops: [CodeTask.Operation] = {
        var o: [CodeTask.Operation] = []
        for k in Int64(0)...9 { o.append(CodeTask.Operation(words: "add \(k)", code: "\(k) +", kind: "+", k: k)) }
        for k in Int64(0)...9 { o.append(CodeTask.Operation(words: "sub \(k)", code: "\(k) -", kind: "-", k: k)) }
        for k in Int64(1)...9 { o.append(CodeTask.Operation(words: "times \(k)", code: "\(k) *", kind: "*", k: k)) }
        return o
    }()

    /// Whether the operation leaves every input as it is.
    static func isIdentity(_ op: CodeTask.Operation) -> Bool { op.kind == "*" ? op.k == 1 : op.k == 0 }
    static let inputs: [Int64] = [0, 1, 2, 3, 5, 7, 10]
    let pairs = PairSplit(0...(ExploreTask.ops.count - 1), 0...(ExploreTask.ops.count - 1)) { a, b in (a * 7 + b * 13) % 3 == 0 }

    public init() {}

    public func promptCount(split: String) -> Int { pairs.count(split: split) }

    /// The pair of a seed: the split's list visited with a stride prime to its length, so
    /// that the first N held-out prompts (an evaluation of eval.prompts) mix every kind.
    func instance(seed: UInt64, split: String) -> (Int, Int) {
        let n = UInt64(pairs.count(split: split))
        let stride = UInt64([97, 89, 83, 79].first { n % $0 != 0 } ?? 1)
        return pairs.pair(seed: (seed % n) * stride % n, split: split)
    }

    /// The kinds of prompt, by what reaches full reward.
    public enum Kind: String, Sendable, CaseIterable {
        /// An operation that changes nothing: the other one alone (never demonstrated: the bonus).
        case identity
        /// A multiplication and an addition or subtraction: the literal program.
        case mixed
        /// Two multiplications: the product folded (demonstrated).
        case products
        /// Two additions or two subtractions: the sum folded (demonstrated).
        case sums
        /// An addition and a subtraction: the difference folded (never demonstrated).
        case differences
    }

    public func kind(seed: UInt64, split: String) -> Kind {
        let (a, b) = instance(seed: seed, split: split)
        if ExploreTask.isIdentity(ExploreTask.ops[a]) || ExploreTask.isIdentity(ExploreTask.ops[b]) { return .identity }
        let ka = ExploreTask.ops[a].kind, kb = ExploreTask.ops[b].kind
        if ka == "*" || kb == "*" { return ka == kb ? .products : .mixed }
        return ka == kb ? .sums : .differences
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

    /// The teacher: products and sums folded, the other prompts written as they read
    /// (never a difference folded, never an operation dropped).
    public func reference(seed: UInt64, split: String) -> (prompt: String, answer: String) {
        let (a, b) = instance(seed: seed, split: split)
        switch kind(seed: seed, split: split) {
        case .products, .sums:
            let (m, c) = ExploreTask.affine(a, b)
            return (prompt(seed: seed, split: split), ExploreTask.shortest(m: m, c: c))
        case .identity, .mixed, .differences:
            return (prompt(seed: seed, split: split), "x \(ExploreTask.ops[a].code) \(ExploreTask.ops[b].code)")
        }
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
