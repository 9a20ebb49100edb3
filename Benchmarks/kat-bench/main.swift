import Foundation
import KATModel
import KATDist
import KATEnv
import KATSupport
import KATTrie
import KATRL

// kat-bench: kat-dist's benchmarks. Each prints ratios measured within one run, so a
// noisy machine affects both sides alike. Times are the thread's CPU time (see `now`).
//
//   (the benchmarks and their options: `usage` below, printed by `kat-bench --help`)

/// What `kat-bench --help` prints: every benchmark and its options.
let usage = """
usage: kat-bench BENCHMARK [OPTIONS]
      mpirun -np N kat-bench allreduce [--mib 64] [--chunk ELEMENTS] [--fail-rank R]
          checks an in-place float allreduce exactly and measures its bus bandwidth
          against point-to-point bandwidth between ranks 0 and 1 in the same run.
      mpirun -np N kat-bench allreduce --sweep [--min-kib 4] [--max-mib 16] [--repeat 5]
          allreduce time, bus bandwidth and one-way point-to-point time at each message size.
      mpirun -np N kat-bench weightsync [--mib 16] [--repeat 5]
          time for new weights to reach every rank through the tree of node leaders and
          each node's shared memory (rank 0 plays trainer 0).
      kat-bench compute [--widths 128,256] [--repeat 2]
          forward+backward time of linear-, attention- and head-heavy batches with their FLOPs
          split by part, and the FLOPs of the trie benchmark's batches (Scaling.swift).
      kat-bench trie [--family gpt2|llama|qwen2] [--scale 1] [--repeat 2] | kat-bench trie --memory
          W1 groups, W2 agentic multi-turn, W3 tree search: flat vs trie forward+backward
          (C=256 L=4 NH=4 V=260), FLOP ratio and measured step-time ratio in one run.
      kat-bench sampler [--size small|124m|0.5b] [--family F] [--prompt 64] [--new 64] [--group 8] [--only shared|unshared]
          batched decoding: generated tokens/s with the group's prompt cache shared and with a
          copy per sample, each beside its sgemm bound (forward FLOPs at the sgemm rate).
      kat-bench model [--size small|124m|0.5b] [--family F] [--seqs 32] [--len 320] [--repeat 3]
          forward+backward on packed flat sequences, one process, against single-thread sgemm
          1024^3 measured in the same run. small: C=256 L=4 NH=4 V=260 (llama, qwen2: 2
          key-value heads, F=704; GPT-2's beside them); 124m: GPT-2 124M; 0.5b: Qwen2.5-0.5B's shape.
      kat-bench group [--size 124m] [--family F] [--prompts 2] [--samples 8] [--prompt-len 128]
                      [--answer-len 32] [--repeat 3] [--memory trie|flat]
          a GRPO-shaped update flat and as a trie (forward, policy loss, backward), FLOP and
          time ratios; --memory: one whole SGD training step alone, and its peak memory.
      kat-bench curve RUN OUT.svg [TITLE]     the README's learning-curve figure of a run
      kat-bench report RUN OUT.html           a run's report drawn again from metrics.jsonl
      kat-bench init-model DIR                a small seeded random GPT-2 model directory
      kat-bench explore-kinds MODEL_DIR       the explore task's held-out prompts solved, by kind
      kat-bench ablation [--task explore,code] [--arms A,B] [--arm NAME:key=value,...] [--seeds 5] [--first-seed 1]
                         [--jobs N] [--out DIR] [--quick] [--set key=value] [--rl-set key=value] [--kat-dist PATH] [--report-only]
          arms x seeds of kat-dist runs in parallel, resumable; mean and 95% interval of the
          final held-out success, pass@k, success area and entropy; curves with bands (Ablation.swift).
"""

BLASRuntime.reexecWithBetterKernelIfNeeded()

/// The benchmarks' clock: this thread's CPU time. Every benchmark here runs its maths on one
/// thread (one BLAS thread), so on an idle machine this is the wall time, and on a machine
/// shared with other jobs it leaves out the time the thread waited for a core.
/// `KAT_BENCH_CLOCK=wall` uses the monotonic wall clock instead.
let useWallClock = ProcessInfo.processInfo.environment["KAT_BENCH_CLOCK"] == "wall"
func now() -> Double {
    var ts = timespec()
    clock_gettime(useWallClock ? CLOCK_MONOTONIC : CLOCK_THREAD_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

func peakRSSBytes() -> Int {
    var ru = rusage()
    getrusage(RUSAGE_SELF.rawValue, &ru)
    return Int(ru.ru_maxrss) * 1024
}

/// The whole number after `--name`, or `def` when the option is not given.
/// Exits 2 naming the option when its value is missing, not a whole number, or below `min`.
func option(_ name: String, _ def: Int, min: Int = 1) -> Int {
    let a = CommandLine.arguments
    guard let i = a.firstIndex(of: "--" + name) else { return def }
    guard i + 1 < a.count, let v = Int(a[i + 1]) else {
        fail("--\(name) needs a whole number" + (i + 1 < a.count ? ", got '\(a[i + 1])'" : ""))
    }
    guard v >= min else { fail("--\(name) must be at least \(min), got \(v)") }
    return v
}

/// Best-of-`reps` single-thread sgemm GFLOP/s at n x n x n, each measurement 8 products in
/// a row (about 0.1 s), so that it sees the machine's load much as a model step does.
func sgemmGFLOPs(n: Int, reps: Int) -> Double {
    let a = FloatBuffer(count: n * n), b = FloatBuffer(count: n * n), c = FloatBuffer(count: n * n)
    var rng = SplitMix64(seed: 1)
    for i in 0..<a.count { a[i] = rng.nextGaussian(); b[i] = rng.nextGaussian() }
    var best = 0.0
    for _ in 0..<reps {
        let t0 = now()
        for _ in 0..<8 { BLASKernels.gemm(m: n, n: n, k: n, a: a, b: b, c: c) }
        best = max(best, 8 * 2 * Double(n * n * n) / (now() - t0) / 1e9)
    }
    return best
}

/// The value of `--family` (default gpt2); exits with a usage message on another name.
func familyOption() -> ModelFamily {
    let a = CommandLine.arguments
    guard let i = a.firstIndex(of: "--family") else { return .gpt2 }
    guard i + 1 < a.count, let f = ModelFamily(rawValue: a[i + 1]) else {
        FileHandle.standardError.write(Data("kat-bench: --family must be one of \(ModelFamily.allCases.map(\.rawValue).joined(separator: ", "))\n".utf8))
        exit(2)
    }
    return f
}

/// The benchmark model of a family: C=256 L=4 NH=4 V=260; llama and qwen2 with 2 key-value
/// heads (grouped-query attention), head size 64 and SwiGLU width 704 (about 8C/3, as
/// Llama sizes it, so the MLP has GPT-2's 8 C^2 weights).
func benchConfig(_ family: ModelFamily, positions: Int) -> any ModelConfiguration {
    if family == .gpt2 { return GPT2Config(vocabSize: 260, nPositions: positions, nEmbd: 256, nLayer: 4, nHead: 4) }
    return LlamaConfig(family: family, vocabSize: 260, nPositions: positions, nEmbd: 256, nLayer: 4, nHead: 4, nKVHead: 2,
                       intermediateSize: 704)
}

func allreduceBenchmark() throws {
    let comm = try MPICollective.initWorld()
    defer { comm.finalize() }
    let count = option("mib", 64) * 262_144
    MPICollective.maxChunk = option("chunk", MPICollective.maxChunk)
    if option("fail-rank", -1, min: 0) == comm.rank { comm.abort("failing on purpose (--fail-rank)") }
    let buf = FloatBuffer(count: count)
    // Small integers are exact in float, so the sum can be checked exactly.
    func fill() { for i in 0..<count { buf[i] = Float((i &* 7 &+ comm.rank) % 1000) } }
    fill()
    try comm.allreduceSum(buf.pointer, count: count)
    for i in 0..<count {
        var expect: Float = 0
        for r in 0..<comm.size { expect += Float((i &* 7 &+ r) % 1000) }
        if buf[i] != expect { comm.abort("allreduce element \(i) is \(buf[i]), expected \(expect)") }
    }
    // Bus bandwidth: 2 (n-1)/n bytes moved per byte reduced (ring allreduce).
    var best = Double.infinity
    for _ in 0..<3 {
        try comm.barrier()
        let t0 = MPICollective.wallTime()
        try comm.allreduceSum(buf.pointer, count: count)
        best = min(best, MPICollective.wallTime() - t0)
    }
    let n = Double(comm.size), bytes = Double(count * 4)
    let busBW = bytes * 2 * (n - 1) / n / best / 1e9
    // Point-to-point: ranks 0 and 1 exchange the same buffer (one way, best of 3).
    var p2p = 0.0
    if comm.size > 1 {
        let msg = [UInt8](repeating: 1, count: count * 4)
        var bestP = Double.infinity
        for _ in 0..<3 {
            try comm.barrier()
            let t0 = MPICollective.wallTime()
            if comm.rank == 0 { try comm.send(msg, to: 1, tag: 5); _ = try comm.receive(from: 1, tag: 6) }
            if comm.rank == 1 { _ = try comm.receive(from: 0, tag: 5); try comm.send([1], to: 0, tag: 6) }
            bestP = min(bestP, MPICollective.wallTime() - t0)
        }
        p2p = bytes / bestP / 1e9
    }
    if comm.rank == 0 {
        print("allreduce \(comm.size) ranks, \(count) floats: sums verified")
        print(String(format: "allreduce bus bandwidth GB/s  %.2f", busBW))
        print(String(format: "point-to-point GB/s           %.2f", p2p))
        print(String(format: "ratio bus/p2p                 %.2f", p2p > 0 ? busBW / p2p : 0))
    }
}

/// The three workloads of the trie benchmark, as token sequences.
func workloads(scale: Int) -> [(String, [[Int32]])] {
    var rng = SplitMix64(seed: 7)
    func toks(_ n: Int) -> [Int32] { (0..<n).map { _ in Int32(rng.next() % 256) } }
    // W1: 8 prompts x 8 samples, 256-token prompts, 64-token answers.
    var w1: [[Int32]] = []
    for _ in 0..<(8 * scale) { let p = toks(256); for _ in 0..<8 { w1.append(p + toks(64)) } }
    // W2: 4 rollouts of 8 turns; each call re-sends the history (128-token task prompt,
    // then per turn a 32-token action and a 64-token observation); loss on the newest action.
    var w2: [[Int32]] = []
    for _ in 0..<(4 * scale) {
        var history = toks(128)
        for _ in 0..<8 { let action = toks(32); w2.append(history + action); history += action + toks(64) }
    }
    // W3: a 128-token prompt, 96-token answers branching two ways at depths 24, 48, 72.
    var w3: [[Int32]] = []
    for _ in 0..<scale {
        let p = toks(128)
        for a in [toks(24), toks(24)] { for b in [toks(24), toks(24)] { for c in [toks(24), toks(24)] {
            let d = toks(24)
            w3.append(p + a + b + c + d)
        } } }
    }
    return [("W1 groups", w1), ("W2 agentic", w2), ("W3 tree", w3)]
}

/// W1 at 1x, 2x and 4x the group count: trie rows, activation bytes and peak memory of a
/// trie-packed forward+backward, each in the same process, one after another.
func trieMemoryBenchmark() throws {
    BLASRuntime.setThreads(1)
    let cfg = GPT2Config(vocabSize: 260, nPositions: 1024, nEmbd: 256, nLayer: 4, nHead: 4)
    print("# W1 (8 prompts x 8 samples per 1x), trie packing, forward+backward")
    print("scale  trie tokens  activations MiB  MiB per 1k trie tokens")
    for scale in [1, 2, 4] {
        let seqs = workloads(scale: scale)[0].1
        let trie = Trie(sequences: seqs)
        let b = try PackedBatch(tokens: trie.tokens.map(Int.init), parents: trie.parents.map(Int.init), vocabSize: 260, maxPositions: 1024)
        let m = try GPT2(config: cfg)
        m.initialize(seed: 1)
        m.forward(b); m.backward(dlogprobs: [Float](repeating: 1e-3, count: b.count))
        let mib = Double(m.workspaceBytes) / 1048576
        print(String(format: "%4dx  %11d  %15.0f  %22.1f", scale, b.count, mib, mib / Double(b.count) * 1000))
    }
    print(String(format: "peak RSS (MiB)  %.0f", Double(peakRSSBytes()) / 1048576))
}

func trieBenchmark() throws {
    if CommandLine.arguments.contains("--memory") { try trieMemoryBenchmark(); return }
    BLASRuntime.setThreads(1)
    let scale = option("scale", 1), reps = option("repeat", 2)
    let cfg = benchConfig(familyOption(), positions: 1024)
    print("# \(BLASRuntime.summary)")
    print("# model \(cfg.shapeSummary), forward+backward, 1 BLAS thread, best of \(reps)")
    print("workload      flat tok  trie tok  FLOP ratio  time flat  time trie  time ratio  ratio/FLOP  act MiB flat  act MiB trie")
    for (name, seqs) in workloads(scale: scale) {
        let trie = Trie(sequences: seqs)
        let flatBatch = try PackedBatch(sequences: seqs.map { $0.map(Int.init) }, vocabSize: 260, maxPositions: 1024)
        let trieBatch = try PackedBatch(tokens: trie.tokens.map(Int.init), parents: trie.parents.map(Int.init), vocabSize: 260, maxPositions: 1024)
        func flops(_ b: PackedBatch) -> Double { cfg.trainingFLOPs(b) }
        func time(_ b: PackedBatch) throws -> (Double, Int) {
            let m = try cfg.makeModel()
            m.initialize(seed: 1)
            var rng = SplitMix64(seed: 3)
            let d = (0..<b.count).map { _ in Float(rng.nextDouble() - 0.5) * 1e-3 }
            var best = Double.infinity
            for _ in 0..<(reps + 1) { // the first pass allocates the workspace
                m.zeroGrad()
                let t0 = now()
                m.forward(b); m.backward(dlogprobs: d)
                best = min(best, now() - t0)
            }
            return (best, m.workspaceBytes)
        }
        let (tf, mf) = try time(flatBatch)
        let (tt, mt) = try time(trieBatch)
        let fr = flops(flatBatch) / flops(trieBatch)
        print(String(format: "%-12@  %8d  %8d  %10.2f  %9.3f  %9.3f  %10.2f  %10.2f  %12.0f  %12.0f", name as NSString,
                     flatBatch.count, trieBatch.count, fr, tf, tt, tf / tt, tf / tt / fr, Double(mf) / 1048576, Double(mt) / 1048576))
    }
}

let cmd = CommandLine.arguments.dropFirst().first ?? "model"
if ["--help", "-h", "help"].contains(cmd) || CommandLine.arguments.contains("--help") {
    print(usage)
    exit(0)
}
if let joined = CommandLine.arguments.first(where: { $0.hasPrefix("--") && $0.contains("=") }) {
    let parts = joined.split(separator: "=", maxSplits: 1)
    fail("write options as '\(parts[0]) \(parts.count > 1 ? parts[1] : "")', not '\(joined)'")
}
/// Each benchmark's options (a value after each, but for the flags) and how many words it
/// takes besides them; `ablation` checks its own.
let benchmarkOptions: [String: (values: Set<String>, flags: Set<String>, positional: ClosedRange<Int>)] = [
    "model": (["size", "family", "seqs", "len", "repeat"], [], 0...0),
    "allreduce": (["mib", "chunk", "fail-rank", "min-kib", "max-mib", "repeat"], ["sweep"], 0...0),
    "weightsync": (["mib", "repeat"], [], 0...0),
    "compute": (["widths", "repeat", "head-vocab"], ["workloads"], 0...0),
    "trie": (["family", "scale", "repeat"], ["memory"], 0...0),
    "sampler": (["size", "family", "prompt", "new", "group", "repeat", "only"], [], 0...0),
    "group": (["size", "family", "prompts", "samples", "prompt-len", "answer-len", "repeat", "max-tokens", "memory"], [], 0...0),
    "explore-kinds": (["prompts", "max-new-tokens"], [], 1...1),
    "curve": ([], [], 2...3),
    "report": ([], [], 2...2),
    "init-model": (["family", "n-embd", "n-layer"], [], 1...1),
]

/// Exits 2 naming the first option `cmd` does not take, or a missing or extra word: a
/// misspelt option must not run the benchmark with its default silently.
func checkArguments(_ cmd: String, _ args: [String]) {
    guard let known = benchmarkOptions[cmd] else { return }
    var positional = 0, i = 0
    while i < args.count {
        let a = args[i]
        if a.hasPrefix("--") {
            let name = String(a.dropFirst(2))
            if known.values.contains(name) {
                i += 2
                continue
            }
            guard known.flags.contains(name) else {
                let all = (known.values.union(known.flags)).sorted().map { "--" + $0 }
                fail("'\(cmd)' has no option \(a)" + (all.isEmpty ? " (it takes none)" : "; its options: " + all.joined(separator: ", ")))
            }
        } else {
            positional += 1
        }
        i += 1
    }
    guard known.positional.contains(positional) else {
        fail("'\(cmd)' takes " + (known.positional.lowerBound == known.positional.upperBound ? "\(known.positional.lowerBound)" : "\(known.positional.lowerBound) to \(known.positional.upperBound)")
             + " argument(s) besides its options, got \(positional) (see kat-bench --help)")
    }
}

checkArguments(cmd, Array(CommandLine.arguments.dropFirst(2)))
do {
    switch cmd {
    case "model": try modelBenchmark()
    case "allreduce": if CommandLine.arguments.contains("--sweep") { try allreduceSweep() } else { try allreduceBenchmark() }
    case "weightsync": try weightSyncBenchmark()
    case "compute": try computeBenchmark()
    case "trie": try trieBenchmark()
    case "sampler": try samplerBenchmark()
    case "group": try groupBenchmark()
    case "explore-kinds":
        // kat-bench explore-kinds MODEL_DIR [--prompts 200] [--max-new-tokens 16]: held-out
        // prompts of the explore task solved by greedy decoding, by kind of prompt.
        let a = CommandLine.arguments
        guard a.count >= 3 else {
            FileHandle.standardError.write(Data("usage: kat-bench explore-kinds MODEL_DIR [--prompts 200] [--max-new-tokens 16]\n".utf8))
            exit(2)
        }
        let kinds = try exploreKinds(modelDirectory: a[2], prompts: option("prompts", 200), maxNewTokens: option("max-new-tokens", 16))
        for k in ExploreTask.Kind.allCases { if let c = kinds[k.rawValue] { print("\(k.rawValue): \(c.solved) of \(c.total)") } }
    case "ablation":
        do { try ablationCommand(Array(CommandLine.arguments.dropFirst(2))) } catch let AblationError.usage(message) {
            FileHandle.standardError.write(Data((message + "\n").utf8))
            exit(2)
        }
    case "curve":
        // kat-bench curve RUN OUT.svg [TITLE]: the held-out success and training reward of a
        // run, drawn by the report's chart code, with the phase boundary marked.
        let a = CommandLine.arguments
        guard a.count >= 4 else {
            FileHandle.standardError.write(Data("usage: kat-bench curve RUN OUT.svg [TITLE]\n".utf8))
            exit(2)
        }
        let text = try String(contentsOfFile: a[2] + "/metrics.jsonl", encoding: .utf8)
        let lines = try text.split(separator: "\n").map { try JSON.parse(String($0)) }
        let title = a.count > 4 ? a[4] : "Learning curve of \(a[2])"
        try (Report.learningCurve(lines: lines, title: title).svg() + "\n").write(toFile: a[3], atomically: true, encoding: .utf8)
    case "report":
        // kat-bench report RUN OUT.html: the run's report drawn again from its metrics.jsonl
        // (without the messages the run itself adds).
        let a = CommandLine.arguments
        guard a.count >= 4 else {
            FileHandle.standardError.write(Data("usage: kat-bench report RUN OUT.html\n".utf8))
            exit(2)
        }
        let text = try String(contentsOfFile: a[2] + "/metrics.jsonl", encoding: .utf8)
        let lines = try text.split(separator: "\n").map { try JSON.parse(String($0)) }
        try Report.html(title: "kat-dist run \(a[2])", lines: lines, notes: []).write(toFile: a[3], atomically: true, encoding: .utf8)
    case "init-model":
        // kat-bench init-model DIR [--family gpt2|llama|qwen2] [--n-embd 64] [--n-layer 2]: a
        // seeded random model of the family (NH=4, byte vocabulary; llama and qwen2 with 2
        // key-value heads, F about 8C/3, tied head).
        let family = familyOption(), c = option("n-embd", 64), layers = option("n-layer", 2)
        let cfg: any ModelConfiguration = family == .gpt2
            ? GPT2Config(vocabSize: 260, nPositions: 128, nEmbd: c, nLayer: layers, nHead: 4)
            : LlamaConfig(family: family, vocabSize: 260, nPositions: 128, nEmbd: c, nLayer: layers, nHead: 4, nKVHead: 2,
                          intermediateSize: (8 * c / 3 + 15) / 16 * 16)
        let m = try cfg.makeModel()
        m.initialize(seed: 7)
        try ModelDirectory.save(m, to: CommandLine.arguments[2])
    default:
        FileHandle.standardError.write(Data("kat-bench: unknown benchmark '\(cmd)' (try: model, trie, sampler, group, allreduce, weightsync, compute, ablation, explore-kinds, init-model DIR [--family F])\n".utf8))
        exit(2)
    }
} catch {
    FileHandle.standardError.write(Data("kat-bench: \(error)\n".utf8))
    exit(1)
}
