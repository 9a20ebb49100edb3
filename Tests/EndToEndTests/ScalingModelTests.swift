import Foundation
import XCTest
import KATSupport
import KATTestSupport
import KATTrie

/// The scaling suite's scripts (Benchmarks/scaling.py, Benchmarks/scaling_model.py), run on
/// fixed small inputs: the parsers on captured output of the quick suite, the kernel-rate
/// fit on rows made from known rates, the simulation on small layouts. The suite itself
/// (minutes of measurements) is not run here.
final class ScalingModelTests: TemporaryDirectoryTestCase {
    let benchmarks = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Benchmarks").standardized.path
    let captured = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/scaling").standardized.path

    /// Runs a script of Benchmarks/ with python3 and parses its standard output as JSON.
    func python(_ script: String, _ args: [String]) throws -> JSON {
        let quoted = ([benchmarks + "/" + script] + args).map { "'" + $0 + "'" }.joined(separator: " ")
        let r = try shell("python3 \(quoted) 2>\(dir)/stderr")
        let err = (try? String(contentsOfFile: dir + "/stderr", encoding: .utf8)) ?? ""
        XCTAssertEqual(r.code, 0, "\(script) \(args): \(err)")
        return try JSON.parse(r.output)
    }

    func simulate(_ settings: [String: JSON]) throws -> JSON {
        let path = dir + "/sim-\(UUID().uuidString).json"
        try JSON.object(settings.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }).serialized.write(toFile: path, atomically: true, encoding: .utf8)
        return try python("scaling_model.py", ["simulate", "--input", path])
    }

    func number(_ j: JSON?, _ key: String) -> Double { j?[key]?.doubleValue ?? .nan }

    /// The numbers of one whitespace-separated data line of a captured table, by column name.
    func capturedRow(_ file: String, where first: String) throws -> [String: Double] {
        let text = try String(contentsOfFile: captured + "/" + file, encoding: .utf8)
        let lines = text.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") }
        let header = lines[0].split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        let row = try XCTUnwrap(lines.first { $0.split(separator: " ").first.map(String.init) == first })
        let cells = row.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        return Dictionary(uniqueKeysWithValues: zip(header, cells).compactMap { h, c in Double(c).map { (h, $0) } })
    }

    /// Every captured output of the quick suite parses, and each parsed value is the one the
    /// captured text holds in that column (a parser that shifted or dropped a column would
    /// put another number there).
    func testTheSuiteParsesCapturedOutputOfEveryBenchmark() throws {
        let parsed = try python("scaling.py", ["--check-parsing", captured])
        // kat-bench compute: every batch, with its FLOP split and times.
        let compute = try XCTUnwrap(parsed["compute.txt"]?.arrayValue)
        XCTAssertEqual(compute.compactMap { $0["batch"]?.stringValue },
                       ["short", "long", "short", "long", "head", "W1-flat", "W1-trie", "W2-flat", "W2-trie", "W3-flat", "W3-trie"])
        let long = try capturedRow("compute.txt", where: "long")
        let first = compute[1]
        for key in ["rows", "pairs", "layer_gflop", "attn_gflop", "best_s", "cpu_s"] {
            XCTAssertEqual(number(first, key), long[key] ?? .nan, "compute column \(key)")
        }
        // allreduce --sweep: one row per size, sizes growing by 4, with the exchange column.
        let sweep = try XCTUnwrap(parsed["allreduce.txt"]?.arrayValue)
        let sizes = sweep.map { number($0, "bytes") }
        XCTAssertEqual(sizes.first, 4096)
        XCTAssertEqual(zip(sizes, sizes.dropFirst()).map { $1 / $0 }, Array(repeating: 4, count: sizes.count - 1))
        let row = try capturedRow("allreduce.txt", where: "1048576")
        let parsedRow = try XCTUnwrap(sweep.first { number($0, "bytes") == 1_048_576 })
        for key in ["allreduce_best_s", "oneway_best_s", "exchange_best_s", "busbw_GBps"] {
            XCTAssertEqual(number(parsedRow, key), row[key] ?? .nan, "allreduce column \(key)")
        }
        // weightsync: the layout line and the median of the updates' latencies.
        let ws = try XCTUnwrap(parsed["weightsync.txt"])
        let text = try String(contentsOfFile: captured + "/weightsync.txt", encoding: .utf8)
        let latencies = text.split(separator: "\n").filter { $0.first?.isNumber == true }.compactMap { Double($0.split(separator: " ", omittingEmptySubsequences: true)[1]) }.sorted()
        XCTAssertEqual(number(ws, "latency_s"), latencies[latencies.count / 2])
        XCTAssertEqual(number(ws, "updates"), Double(latencies.count))
        XCTAssertEqual(number(ws, "leaders"), 1, "one node: trainer 0 is the only leader")
        // sampler: both rates and their ratio.
        let s = try XCTUnwrap(parsed["sampler.txt"])
        XCTAssertEqual(number(s, "ratio"), number(s, "shared_tok_s") / number(s, "unshared_tok_s"), accuracy: 1e-12)
        // trie --memory: one row per scale.
        XCTAssertEqual(parsed["trie-memory.txt"]?["rows"]?.arrayValue?.count, 3)
        // An online run's metrics: steps after the skipped ones, staleness counts of every trained trajectory.
        let m = try XCTUnwrap(parsed["metrics.jsonl"])
        let lines = try String(contentsOfFile: captured + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map { try JSON.parse(String($0)) }
        XCTAssertEqual(number(m, "steps"), Double(lines.count - 2))
        let hist = try XCTUnwrap(m["staleness_hist"]?.arrayValue).compactMap(\.doubleValue)
        XCTAssertEqual(hist.reduce(0, +), lines.dropFirst(2).reduce(0) { $0 + ($1["trajectories"]?.doubleValue ?? 0) })
        // The key list says whether partial rollouts can be measured.
        XCTAssertNotNil(parsed["keys.txt"]?["partial"]?.boolValue)
    }

    /// The kernel-rate fit recovers the rates that made its input: times built as linear,
    /// head and attention FLOPs over known rates (and a width dependence of the assumed
    /// form) come back to those rates to round-off.
    func testKernelRateFitRecoversTheRatesThatMadeItsInput() throws {
        let rInf = (lin: 100e9, head: 60e9, attn: 40e9), cHalf = (lin: 64.0, head: 64.0, attn: 128.0)
        func r(_ inf: Double, _ half: Double, _ c: Double) -> Double { inf * c / (c + half) }
        var rows: [JSON] = []
        for c in [128.0, 256.0] {
            // Head FLOPs only in the head-heavy batch: elsewhere the fit counts them at the linear rate.
            var shapes: [(String, Double, Double, Double)] = [("short", 20, 0, 0.8), ("long", 10, 0, 6.5)]
            if c == 256 { shapes.append(("head", 19, 25, 0.4)) }
            for (name, layer, head, attn) in shapes {
                let t = layer * 1e9 / r(rInf.lin, cHalf.lin, c) + head * 1e9 / r(rInf.head, cHalf.head, c) + attn * 1e9 / r(rInf.attn, cHalf.attn, c)
                rows.append(.object([("batch", .string(name)), ("C", JSON(Int(c))), ("layer_gflop", JSON(layer)), ("head_gflop", JSON(head)),
                                     ("attn_gflop", JSON(attn)), ("best_s", JSON(t))]))
            }
        }
        let path = dir + "/rows.json"
        try JSON.array(rows).serialized.write(toFile: path, atomically: true, encoding: .utf8)
        let fit = try python("scaling_model.py", ["fit-compute", "--input", path])
        // At C=256 three batches fix the three rates exactly; at C=128 two batches fix the
        // linear and attention rates (the head taking C=256's share of the linear rate,
        // which holds here because both have the same C_half).
        for (part, inf, half) in [("lin", rInf.lin, cHalf.lin), ("head", rInf.head, cHalf.head), ("attn", rInf.attn, cHalf.attn)] {
            for c in [128.0, 256.0] {
                let got = number(fit["per_width"]?[String(Int(c))], part)
                XCTAssertEqual(got / r(inf, half, c), 1, accuracy: 1e-6, "\(part) at C=\(Int(c))")
            }
            // Two widths determine r_inf and C_half of the saturating form exactly.
            XCTAssertEqual(number(fit[part], "r_inf") / inf, 1, accuracy: 1e-6, part)
            XCTAssertEqual(number(fit[part], "c_half") / half, 1, accuracy: 1e-6, part)
        }
    }

    /// The simulation repeats exactly for the same settings, and behaves as the runtime's
    /// rules say it must on a small layout.
    func testSimulationRepeatsAndFollowsTheRuntimesRules() throws {
        let base: [String: JSON] = ["trainers": JSON(1), "rollouts": JSON(1), "cores": JSON(2), "prompts": JSON(16), "group_tokens": JSON(272),
                                    "gen_s_per_token": JSON(4.3e-5), "train_s": JSON(0.39), "optimizer_s": JSON(0.007), "steps": JSON(30)]
        let a = try simulate(base), b = try simulate(base)
        XCTAssertEqual(a, b, "same settings, same run")
        // Staleness shares sum to one.
        XCTAssertEqual(try XCTUnwrap(a["staleness_hist"]?.arrayValue).compactMap(\.doubleValue).reduce(0, +), 1, accuracy: 1e-12)
        // One rollout rank decodes the next batch while the trainer computes (its share of a
        // batch, 16 groups, may wait to be taken): every trained group is one version behind.
        XCTAssertEqual(number(a, "staleness_mean"), 1, accuracy: 1e-12)
        XCTAssertLessThan(number(a, "trainer_idle"), 0.01)
        // With one group in flight (a synchronous hand-over), the rollout rank stops after
        // its first batch of 4 while the trainer computes, and the trainer then waits.
        var handOver = base
        handOver["in_flight"] = JSON(1)
        let single = try simulate(handOver)
        XCTAssertGreaterThan(number(single, "trainer_idle"), 0.05)
        XCTAssertLessThan(number(single, "trained_tokens_per_s"), number(a, "trained_tokens_per_s"))
        // Generation that costs nothing: the trainer never waits, and a step is its own work
        // (compute, optimizer) plus the half-millisecond it takes to notice a full buffer.
        var free = base
        free["gen_s_per_token"] = JSON(1e-12)
        let f = try simulate(free)
        XCTAssertLessThan(number(f, "trainer_idle"), 0.01)
        XCTAssertEqual(number(f, "step_s"), 0.39 + 0.007 + 0.001, accuracy: 0.002)
        // A trainer that costs nothing: throughput is what the rollout ranks generate, so
        // doubling them (with a core each) doubles it, within the jitter of group sizes (15%).
        var genBound = base
        genBound["train_s"] = JSON(1e-6); genBound["optimizer_s"] = JSON(0); genBound["cores"] = JSON.null
        let one = try simulate(genBound)
        genBound["rollouts"] = JSON(2)
        let two = try simulate(genBound)
        XCTAssertEqual(number(two, "trained_tokens_per_s") / number(one, "trained_tokens_per_s"), 2, accuracy: 0.3)
        // Multiplexing where generation is the bottleneck: a trainer that would wait generates
        // instead (parking its decoding while it trains), so it never sleeps, generates some
        // of the groups itself, and trains faster.
        var slow = base
        slow["gen_s_per_token"] = JSON(1.5e-4)
        slow["partial"] = JSON(true)
        let waits = try simulate(slow)
        XCTAssertGreaterThan(number(waits, "trainer_idle"), 0.05, "without multiplexing this layout waits for its rollout rank")
        slow["multiplex"] = JSON(true)
        let m = try simulate(slow)
        XCTAssertEqual(number(m, "trainer_idle"), 0)
        XCTAssertGreaterThan(number(m, "trainer_generating"), 0)
        XCTAssertGreaterThan(number(m, "trained_tokens_per_s"), number(waits, "trained_tokens_per_s") * 1.1)
        // Admission control: 16 rollout ranks that could generate 64 groups at once for a
        // trainer taking 16 a step, with max_staleness 1, start no group that would go stale
        // (none dropped; they wait for newer weights instead), so no more is generated than
        // is trained. Without it the same layout makes groups that go stale and are dropped.
        var many = base
        many["rollouts"] = JSON(16); many["cores"] = JSON.null; many["max_staleness"] = JSON(1)
        let admitted = try simulate(many)
        XCTAssertEqual(number(admitted, "dropped_groups"), 0)
        XCTAssertGreaterThan(number(admitted, "throttled_share"), 0)
        XCTAssertEqual(number(admitted, "generated_tokens_per_s") / number(admitted, "trained_tokens_per_s"), 1, accuracy: 0.05)
        many["admission"] = JSON(false)
        let unadmitted = try simulate(many)
        XCTAssertGreaterThan(number(unadmitted, "dropped_groups"), 0)
        XCTAssertEqual(number(unadmitted, "throttled_share"), 0)
        // Buffers that cannot hold one batch are refused (kat-dist would wait for ever).
        var small = base
        small["buffer_groups"] = JSON(8)
        let path = dir + "/small.json"
        try JSON.object(small.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }).serialized.write(toFile: path, atomically: true, encoding: .utf8)
        let r = try shell("python3 '\(benchmarks)/scaling_model.py' simulate --input '\(path)'")
        XCTAssertEqual(r.code, 2)
        XCTAssertTrue(r.output.contains("cannot hold a batch"), r.output)
    }

    /// The model's trainer shards of an offline step are the ones kat-dist makes
    /// (`Trie.shards`): the same rows and attention pairs per trainer, for layouts where
    /// whole groups go to trainers and where groups are cut below their prompts.
    func testTheModelShardsLikeKatDist() throws {
        for (trainers, groups, prompt, answer) in [(6, 8, 128, 32), (3, 8, 128, 32), (4, 8, 128, 32), (3, 2, 20, 5), (5, 3, 40, 9)] {
            let g = 8
            var sequences: [[Int32]] = []
            for k in 0..<groups {
                let p = (0..<prompt).map { Int32(1000 * (k + 1) + $0) }
                for j in 0..<g { sequences.append(p + (0..<answer).map { Int32(100 * j + $0 + 1) }) }
            }
            let trie = Trie(sequences: sequences)
            let shards = trie.shards(trainers)
            func pairs(_ s: TrieShard) -> Int {
                var depth = [Int](repeating: 0, count: s.count)
                for r in 0..<s.count where s.parents[r] >= 0 { depth[r] = depth[Int(s.parents[r])] + 1 }
                return depth.reduce(0) { $0 + $1 + 1 }
            }
            let swift = shards.map { [$0.count, pairs($0)] }.sorted { $0.lexicographicallyPrecedes($1) }
            let input = dir + "/shards-\(trainers)-\(groups).json"
            try #"{"trainers": \#(trainers), "trajectories_per_step": \#(groups * g), "group": \#(g), "prompt": \#(prompt), "answer": \#(answer)}"#
                .write(toFile: input, atomically: true, encoding: .utf8)
            let model = try XCTUnwrap(python("scaling_model.py", ["shards", "--input", input]).arrayValue)
            let predicted = model.map { [Int(number($0, "rows")), Int(number($0, "pairs"))] }.sorted { $0.lexicographicallyPrecedes($1) }
            XCTAssertEqual(predicted, swift, "T=\(trainers), \(groups) groups of \(g) answers of \(answer) tokens to a \(prompt)-token prompt")
        }
    }
}
