import Foundation
import XCTest
@testable import KATEnv
import KATSupport

final class StackLanguageTests: XCTestCase {
    func value(_ p: String, _ x: Int64) -> Int64? { if case let .success(r) = StackLanguage.run(p, input: x) { return r.value }; return nil }
    func fault(_ p: String, _ x: Int64 = 3) -> StackLanguage.Fault? { if case let .failure(f) = StackLanguage.run(p, input: x) { return f }; return nil }

    func testSemantics() {
        XCTAssertEqual(value("x 3 * 5 +", 2), 11)
        XCTAssertEqual(value("x 7 - 2 /", 1), -3)
        XCTAssertEqual(value("x 4 % dup *", 7), 9)
        XCTAssertEqual(value("1 x swap - 2 over drop drop", 5), 4)
        // A loop summing x down to 1: acc x [ dup rot... ] written with a word.
        XCTAssertEqual(value(": fact dup 1 - dup [ dup fact swap drop * 0 ] drop ; x fact", 1), 1)
        XCTAssertEqual(value("0 x dup [ swap over + swap 1 - dup ] drop", 4), 10)
        if case let .success(r) = StackLanguage.run("x . x 1 + . 0", input: 4) { XCTAssertEqual(r.output, "4 5 ") } else { XCTFail() }
    }

    /// The sandbox: an endless loop, huge output, deep recursion, unbounded stack growth and
    /// malformed programs each end with a fault, fast.
    func testSandboxLimits() {
        let t0 = Date()
        XCTAssertEqual(fault("1 [ 1 ]"), .stepLimit)
        XCTAssertEqual(fault("1 [ 12345678 . 1 ]"), .outputLimit)
        XCTAssertEqual(fault(": f f ; f"), .callDepth)
        XCTAssertEqual(fault("1 [ 1 1 ]"), .stackOverflow)
        XCTAssertEqual(fault("x 0 /"), .divisionByZero)
        XCTAssertEqual(fault("9223372036854775807 1 +"), .overflow)
        XCTAssertEqual(fault("+"), .stackUnderflow)
        XCTAssertEqual(fault(""), .empty)
        XCTAssertEqual(fault(String(repeating: "1 ", count: 400)), .tooLong)
        for bad in ["x 3 * ]", "[ 1", ": f 1", "; x", "x foo", "x 3 # 4", ": : ;", "x ? 1"] {
            guard case .syntax? = fault(bad) else { XCTFail("\(bad) should be a syntax error"); continue }
        }
        XCTAssertLessThan(Date().timeIntervalSince(t0), 2, "every limit ends quickly")
    }
}

final class TaskTests: XCTestCase {
    /// Held-out prompts are never training prompts, and there are at least 200 of them.
    func testHeldOutSplitsAreDisjointAndLargeEnough() {
        for task in [CodeTask() as Task, ArithmeticTask()] {
            let train = Set((0..<task.promptCount(split: "train")).map { task.reference(seed: UInt64($0), split: "train").prompt })
            let test = Set((0..<task.promptCount(split: "test")).map { task.reference(seed: UInt64($0), split: "test").prompt })
            XCTAssertGreaterThanOrEqual(test.count, 200, task.name)
            XCTAssertTrue(train.isDisjoint(with: test), task.name)
        }
    }

    /// The reference answer earns full reward; the sandbox's faults earn 0 and the
    /// environment carries on; multi-turn feedback names the failing inputs.
    func testCodeEnvironmentRewards() throws {
        let task = CodeTask()
        let env = task.makeEnvironment(maxTurns: 2)
        let prompt = try env.reset(seed: 11, split: "train")
        XCTAssertEqual(prompt, task.reference(seed: 11, split: "train").prompt)
        let first = try env.step(action: "1 [ 1 ]")
        XCTAssertFalse(first.done)
        XCTAssertEqual(first.reward, 0)
        XCTAssertTrue(first.observation.contains("step limit exceeded"), first.observation)
        let second = try env.step(action: task.reference(seed: 11, split: "train").answer)
        XCTAssertTrue(second.done)
        XCTAssertEqual(second.reward, 1)
        for bad in [": f f ; f", "1 [ 7 . 1 ]", "x ]", ""] {
            _ = try env.reset(seed: 3, split: "test")
            let r = try task.makeEnvironment(maxTurns: 1).step(action: bad)
            XCTAssertEqual(r.reward, 0, bad)
            XCTAssertTrue(r.done)
        }
    }
}

final class ExternalEnvironmentTests: XCTestCase {
    let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Launch/envs/reverse_env.py").standardized.path

    func testSpeaksTheProtocol() throws {
        let env = ExternalEnvironment(command: "python3 \(example)", timeout: 10)
        let prompt = try env.reset(seed: 4, split: "train")
        XCTAssertTrue(prompt.hasPrefix("reverse: "))
        let word = String(prompt.dropFirst("reverse: ".count))
        let r = try env.step(action: String(word.reversed()))
        XCTAssertEqual(r, EnvReply(observation: "", reward: 1, done: true))
    }

    /// A hanging environment is a clear error after the time-out (restarted once), never a hang.
    func testHangingEnvironmentIsAnError() {
        let env = ExternalEnvironment(command: "sleep 30", timeout: 0.3)
        let t0 = Date()
        XCTAssertThrowsError(try env.reset(seed: 1, split: "train")) { e in
            XCTAssertTrue("\(e)".contains("environment sleep 30: no reply within 0.3 s"), "\(e)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(t0), 5)
    }

    func testGarbageAndMissingFieldsAreErrors() {
        let garbage = ExternalEnvironment(command: "while read l; do echo 'not json'; done", timeout: 5)
        XCTAssertThrowsError(try garbage.reset(seed: 1, split: "train")) { XCTAssertTrue("\($0)".contains("reply is not JSON: not json"), "\($0)") }
        let noPrompt = ExternalEnvironment(command: "while read l; do echo '{\"x\": 1}'; done", timeout: 5)
        XCTAssertThrowsError(try noPrompt.reset(seed: 1, split: "train")) { XCTAssertTrue("\($0)".contains("lacks a string \"prompt\""), "\($0)") }
        let badReward = ExternalEnvironment(command: "read l; echo '{\"prompt\": \"p\"}'; while read l; do echo '{\"observation\": \"\", \"reward\": \"lots\", \"done\": true}'; done", timeout: 5)
        XCTAssertNoThrow(try badReward.reset(seed: 1, split: "train"))
        XCTAssertThrowsError(try badReward.step(action: "a")) { XCTAssertTrue("\($0)".contains("lacks a finite number \"reward\""), "\($0)") }
        let dies = ExternalEnvironment(command: "exit 3", timeout: 5)
        XCTAssertThrowsError(try dies.reset(seed: 1, split: "train")) { XCTAssertTrue("\($0)".contains("environment exit 3"), "\($0)") }
    }

    /// A failed exchange ends the process and fails that episode; the next episode starts
    /// a fresh process and works.
    func testAFailureEndsTheEpisodeAndTheNextOneStartsAFreshProcess() throws {
        let marker = NSTemporaryDirectory() + "env-\(UUID().uuidString)"
        // First process: answers reset, then dies on the first step. Second process: works.
        let script = "if [ -e \(marker) ]; then exec python3 \(example); else touch \(marker); read l; echo '{\"prompt\": \"reverse: ab\"}'; exit 1; fi"
        defer { try? FileManager.default.removeItem(atPath: marker) }
        let env = ExternalEnvironment(command: script, timeout: 10)
        _ = try env.reset(seed: 4, split: "train")
        XCTAssertThrowsError(try env.step(action: "zz")) { XCTAssertFalse(($0 as? EnvironmentError)?.endsTheRun ?? true) }
        XCTAssertEqual(env.failuresInARow, 1)
        XCTAssertTrue(try env.reset(seed: 4, split: "train").hasPrefix("reverse: "))
        XCTAssertEqual(try env.step(action: "zz").done, false)
        XCTAssertEqual(env.failuresInARow, 0, "a good step reply clears the count")
        XCTAssertEqual(env.starts, 2)
    }

    /// Three failures in a row end the run, with the last failure's message.
    func testThreeFailuresInARowEndTheRun() {
        let env = ExternalEnvironment(command: "exit 3", timeout: 5)
        for k in 1...3 {
            XCTAssertThrowsError(try env.reset(seed: 1, split: "train")) { e in
                XCTAssertEqual((e as? EnvironmentError)?.endsTheRun, k == 3, "\(k): \(e)")
                if k == 3 { XCTAssertTrue("\(e)".contains("3 failures in a row"), "\(e)") }
            }
        }
    }

    /// Ending an environment ends every process it started, also one that left its
    /// process group.
    func testEndingTheEnvironmentEndsItsDescendants() throws {
        let tag = "7\(Int.random(in: 100_000...999_999)).5"
        let env = ExternalEnvironment(command: "sleep \(tag) & setsid sleep \(tag) & sleep \(tag)", timeout: 0.3)
        XCTAssertThrowsError(try env.reset(seed: 1, split: "train"))
        usleep(100_000)
        // Without the guardian, the group is ended: the process that left it (setsid)
        // survives, which is why kat-dist runs environments under its guardian.
        let left = try pgrep(tag)
        XCTAssertLessThanOrEqual(left.count, 1, "only the setsid escapee may survive without a guardian: \(left)")
        for p in left { kill(p, SIGKILL) }
    }
}

/// Pids of processes whose command line contains `text`.
func pgrep(_ text: String) throws -> [pid_t] {
    let entries = try FileManager.default.contentsOfDirectory(atPath: "/proc")
    return entries.compactMap { name -> pid_t? in
        guard let p = pid_t(name), let data = FileManager.default.contents(atPath: "/proc/\(name)/cmdline") else { return nil }
        let cmd = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
        return cmd.contains(text) && !cmd.contains("pgrep") ? p : nil
    }
}

final class ExploreTaskTests: XCTestCase {
    let task = ExploreTask()

    func reward(_ program: String, _ seed: UInt64, _ split: String = "train") -> Double {
        task.reward(program: program, seed: seed, split: split)
    }

    /// The rewards of the strategies, by kind of prompt: the literal program is full reward
    /// where it is shortest and half where a fold is shorter; the fold is full reward; a
    /// wrong constant earns nothing.
    func testStrategiesAndTheirRewards() throws {
        var seen = Set<ExploreTask.Kind>()
        for split in ["train", "test"] {
            for i in 0..<task.promptCount(split: split) {
                let seed = UInt64(i)
                let prompt = task.prompt(seed: seed, split: split)
                let parts = prompt.components(separatedBy: " then ")
                let ops = parts.map { words in ExploreTask.ops.first { $0.words == words } }
                guard let a = ops[0], let b = ops[1] else { return XCTFail("prompt \(prompt)") }
                let literal = "x \(a.code) \(b.code)"
                // f(x) = m x + c, folded by hand.
                func f(_ x: Int64) -> Int64 { b.f(a.f(x)) }
                let c = f(0), m = f(1) - f(0)
                var shortest = "x"
                if m != 1 { shortest += " \(m) *" }
                if c > 0 { shortest += " \(c) +" } else if c < 0 { shortest += " \(-c) -" }
                let kind = task.kind(seed: seed, split: split)
                seen.insert(kind)
                XCTAssertEqual(reward(shortest, seed, split), 1, "\(prompt): \(shortest)")
                XCTAssertEqual(reward(literal, seed, split), kind == .mixed ? 1 : 0.5, "\(prompt): \(literal)")
                // Imitating the demonstrated fold (adding the constants) is wrong on a difference.
                if kind == .differences { XCTAssertLessThan(reward("x \(a.k + b.k) +", seed, split), 0.5, "\(prompt)") }
                // A wrong constant in the shortest program's form is right on no input but by chance.
                XCTAssertLessThan(reward("x \(abs(c) + 1) +", seed, split), 0.5, "\(prompt)")
                XCTAssertEqual(reward("x 3 +", seed, split) > 0.5, c == 3 && m == 1, "\(prompt)")
                XCTAssertEqual(reward("not a program", seed, split), 0)
            }
        }
        XCTAssertEqual(seen, Set(ExploreTask.Kind.allCases))
    }

    /// The bonus is never demonstrated: on prompts with an operation that changes nothing,
    /// and on prompts of an addition and a subtraction, neither the teacher nor the weaker
    /// teacher reaches full reward; elsewhere the teacher does, and the weaker teacher's
    /// swapped operations are wrong or unfolded.
    func testDemonstrationsNeverShowTheBonus() {
        var differences = 0
        for i in 0..<task.promptCount(split: "train") {
            let seed = UInt64(i)
            let ref = task.reference(seed: seed, split: "train"), flawed = task.flawedDemonstration(seed: seed, split: "train")
            let kind = task.kind(seed: seed, split: "train")
            if kind == .differences || kind == .identity {
                differences += 1
                XCTAssertEqual(reward(ref.answer, seed), 0.5, ref.answer)
                XCTAssertEqual(reward(flawed.answer, seed), 0.5, flawed.answer)
            } else {
                XCTAssertEqual(reward(ref.answer, seed), 1, ref.answer)
                // Swapped operations: wrong for a multiplication with an addition, right but
                // unfolded for two multiplications or two additions.
                if kind == .mixed { XCTAssertLessThan(reward(flawed.answer, seed), 0.5, flawed.answer) }
                else { XCTAssertEqual(reward(flawed.answer, seed), 0.5, flawed.answer) }
            }
        }
        XCTAssertGreaterThan(differences, task.promptCount(split: "train") / 3, "the bonus concerns a large share of the prompts")
    }

    /// The held-out split is disjoint from the training split, and it holds every kind.
    func testHeldOutPromptsAreNeverTrained() {
        let train = Set((0..<task.promptCount(split: "train")).map { task.prompt(seed: UInt64($0), split: "train") })
        let test = (0..<task.promptCount(split: "test")).map { task.prompt(seed: UInt64($0), split: "test") }
        XCTAssertEqual(train.count + test.count, 29 * 29)
        XCTAssertTrue(test.allSatisfy { !train.contains($0) })
        XCTAssertEqual(Set((0..<test.count).map { task.kind(seed: UInt64($0), split: "test") }), Set(ExploreTask.Kind.allCases))
    }

    /// The environment plays one answer per episode with the task's reward.
    func testEnvironmentEpisode() throws {
        let env = task.makeEnvironment(maxTurns: 3)
        let prompt = try env.reset(seed: 5, split: "test")
        XCTAssertEqual(prompt, task.prompt(seed: 5, split: "test"))
        let reply = try env.step(action: "x")
        XCTAssertTrue(reply.done)
        XCTAssertEqual(reply.reward, task.reward(program: "x", seed: 5, split: "test"))
        XCTAssertNotNil(builtinTask("explore"))
    }
}
