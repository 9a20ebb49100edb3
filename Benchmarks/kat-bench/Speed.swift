import Foundation
import KATModel
import KATRL
import KATSupport
import KATTrie

// The speed benchmarks at real model sizes: `model` (forward+backward against sgemm),
// `sampler` (batched decoding against the sgemm bound) and `group` (a GRPO-shaped training
// step, flat and trie, with its peak memory). Benchmarks/peer_compare.py runs the same
// shapes through PyTorch/transformers beside them.

/// The value of `--name` as a string, or `def`.
/// The word after `--name`, or `def` when the option is not given; exits 2 when the
/// option is given without a value.
func stringOption(_ name: String, _ def: String) -> String {
    let a = CommandLine.arguments
    guard let i = a.firstIndex(of: "--" + name) else { return def }
    guard i + 1 < a.count, !a[i + 1].hasPrefix("--") else { fail("--\(name) needs a value") }
    return a[i + 1]
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("kat-bench: \(message)\n".utf8))
    exit(2)
}

/// Model sizes of the benchmarks.
enum BenchSize: String, CaseIterable {
    /// C=256 L=4 NH=4, V=260 (`model`, `group`); the sampler's is C=128.
    case small
    /// GPT-2 124M: C=768 L=12 NH=12, V=50257.
    case gpt2_124m = "124m"
    /// Qwen2.5-0.5B's shape: C=896 L=24, 14 query heads of 64, 2 key-value heads, F=4864,
    /// V=151936, q/k/v biases, tied head (llama or qwen2 only).
    case qwen_05b = "0.5b"
}

func sizeOption() -> BenchSize {
    let s = stringOption("size", "small")
    guard let size = BenchSize(rawValue: s) else {
        fail("--size must be one of \(BenchSize.allCases.map(\.rawValue).joined(separator: ", ")), got \(s)")
    }
    return size
}

/// The family of `--family`, defaulting to qwen2 for the 0.5b size and gpt2 otherwise.
func familyFor(_ size: BenchSize) -> ModelFamily {
    CommandLine.arguments.contains("--family") ? familyOption() : (size == .qwen_05b ? .qwen2 : .gpt2)
}

/// The model of a family at a size; `width` overrides C of the small size (the sampler's 128).
func shapeConfig(_ family: ModelFamily, _ size: BenchSize, positions: Int, smallWidth: Int = 256) -> any ModelConfiguration {
    switch size {
    case .small:
        if family == .gpt2 { return GPT2Config(vocabSize: 260, nPositions: positions, nEmbd: smallWidth, nLayer: 4, nHead: 4) }
        return LlamaConfig(family: family, vocabSize: 260, nPositions: positions, nEmbd: smallWidth, nLayer: 4, nHead: 4, nKVHead: 2,
                           intermediateSize: smallWidth * 11 / 4)
    case .gpt2_124m:
        guard family == .gpt2 else { fail("--size 124m is GPT-2's shape; use --family gpt2") }
        return GPT2Config(vocabSize: 50257, nPositions: max(1024, positions), nEmbd: 768, nLayer: 12, nHead: 12,
                          bosTokenId: nil, eosTokenId: nil, sepTokenId: nil, padTokenId: nil)
    case .qwen_05b:
        guard family != .gpt2 else { fail("--size 0.5b is a Llama-family shape; use --family qwen2 or llama") }
        return LlamaConfig(family: family, vocabSize: 151936, nPositions: max(2048, positions), nEmbd: 896, nLayer: 24, nHead: 14,
                           nKVHead: 2, intermediateSize: 4864, ropeTheta: 1_000_000, tieWordEmbeddings: true)
    }
}

/// Forward-only FLOPs (a third of the training count): 2 x the layers' parameters per row,
/// 2 V C per row whose distribution is computed, 4 x (query width) x L per (query, key) pair.
func forwardFLOPs(_ cfg: any ModelConfiguration, rows: Double, headRows: Double, pairs: Double) -> Double {
    (rows * cfg.layerFLOPsPerToken + headRows * cfg.headFLOPsPerRow + pairs * cfg.flopsPerAttentionPair) / 3
}

func mib(_ bytes: Int) -> Double { Double(bytes) / 1048576 }

/// What `now()` measures, for the headers.
var clockNote: String { useWallClock ? "wall time" : "thread CPU time" }

/// Memory read bandwidth: the best of 3 vectorised passes over 256 MB (sum of squares).
func readGBps() -> Double {
    let buf = FloatBuffer(count: 1 << 26)
    for i in stride(from: 0, to: buf.count, by: 1024) { buf[i] = 1 }
    var best = Double.infinity
    for _ in 0..<3 {
        let t0 = now()
        _ = Optimizer.globalNorm(buf)
        best = min(best, now() - t0)
    }
    return Double(4 * buf.count) / best / 1e9
}

// MARK: - kat-bench model

/// Forward+backward on packed flat sequences against single-thread sgemm measured in the
/// same run, in turns (best of `--repeat` rounds each).
func modelBenchmark() throws {
    BLASRuntime.setThreads(1)
    let size = sizeOption(), family = familyFor(size)
    let seqs = option("seqs", size == .small ? 32 : 4), len = option("len", size == .small ? 320 : 512)
    let reps = option("repeat", size == .small ? 3 : 2)
    // The family asked for, and at the small size GPT-2 of the same width and depth beside it.
    let configs = [shapeConfig(family, size, positions: max(512, len))]
        + (family == .gpt2 || size != .small ? [] : [shapeConfig(.gpt2, .small, positions: max(512, len))])
    let v = configs[0].vocabSize
    var rng = SplitMix64(seed: 2)
    let sequences = (0..<seqs).map { _ in (0..<len).map { _ in Int(rng.next() % UInt64(min(v, 50000))) } }
    let batch = try PackedBatch(sequences: sequences, vocabSize: v, maxPositions: configs[0].nPositions)
    let d = (0..<batch.count).map { _ in Float(rng.nextDouble() - 0.5) / Float(batch.count) }
    print("# \(BLASRuntime.summary)")
    print("# model \(configs[0].shapeSummary), \(seqs) sequences x \(len) tokens, 1 BLAS thread, \(clockNote)")
    var sg = sgemmGFLOPs(n: 1024, reps: 3)
    let models = try configs.map { cfg -> any LanguageModel in
        let m = try cfg.makeModel()
        m.initialize(seed: 1)
        // Warm-up pass allocates the workspace.
        m.zeroGrad(); m.forward(batch); m.backward(dlogprobs: d)
        return m
    }
    // Rounds of sgemm and each model in turn, best of each, so a change of the machine's
    // load during the run reaches every side alike.
    var best = [Double](repeating: .infinity, count: models.count), fwdBest = best
    for _ in 0..<reps {
        for (k, model) in models.enumerated() {
            model.zeroGrad()
            let t0 = now()
            model.forward(batch)
            let t1 = now()
            model.backward(dlogprobs: d)
            let t2 = now()
            best[k] = min(best[k], t2 - t0)
            fwdBest[k] = min(fwdBest[k], t1 - t0)
        }
        sg = max(sg, sgemmGFLOPs(n: 1024, reps: 1))
    }
    let n = Double(batch.count)
    // Layers per token, head per row with children, attention per (query, key) pair.
    let flops = configs.map { $0.trainingFLOPs(batch) }
    let gf = flops[0] / best[0] / 1e9
    print(String(format: "tokens/s            %.0f", n / best[0]))
    print(String(format: "step time (s)       %.3f  (forward %.3f)", best[0], fwdBest[0]))
    print(String(format: "model GFLOP/s       %.1f  (%.1f GFLOP per step)", gf, flops[0] / 1e9))
    print(String(format: "sgemm 1024^3 GFLOP/s %.1f  (1 thread, same run)", sg))
    print(String(format: "ratio model/sgemm   %.2f", gf / sg))
    print(String(format: "peak memory (MiB)   %.0f  (activations %.0f)", mib(peakRSSBytes()), mib(models[0].workspaceBytes)))
    if models.count > 1 {
        let ggf = flops[1] / best[1] / 1e9
        print(String(format: "gpt2 GFLOP/s        %.1f  (%@, same batch, step %.3f s)", ggf, configs[1].shapeSummary as NSString, best[1]))
        print(String(format: "ratio gpt2/sgemm    %.2f", ggf / sg))
    }
}

// MARK: - kat-bench sampler

/// Batched decoding of `--group` samples of one `--prompt`-token prompt, `--new` tokens
/// each (no stop token, so every sample has that length), with the prompt's cache shared by
/// the group and with one copy per sample; each against its sgemm bound (its forward FLOPs at
/// the sgemm rate measured in the same run).
func samplerBenchmark() throws {
    BLASRuntime.setThreads(1)
    let size = sizeOption(), family = familyFor(size)
    let promptLen = option("prompt", 64), newTokens = option("new", 64), group = option("group", 8)
    let reps = option("repeat", size == .small ? 3 : 2)
    let only = stringOption("only", "both")
    guard ["both", "shared", "unshared"].contains(only) else { fail("--only must be shared or unshared, got '\(only)'") }
    let cfg = shapeConfig(family, size, positions: max(512, promptLen + newTokens + 1), smallWidth: 128)
    let model = try cfg.makeModel()
    model.initialize(seed: 1)
    let v = cfg.vocabSize
    var rng = SplitMix64(seed: 4)
    let prompt = (0..<promptLen).map { _ in Int32(rng.next() % UInt64(min(v, 50000))) }
    var sc = SamplingConfig()
    sc.maxNewTokens = newTokens
    print("# \(BLASRuntime.summary)")
    print("# model \(cfg.shapeSummary), prompt \(promptLen) tokens, \(group) samples x \(newTokens) new tokens, 1 BLAS thread, \(clockNote)")
    // Shared: one prefill, every sample continues from it.
    func shared() throws -> Double {
        let s = Sampler(model: model, seed: 1)
        let t0 = now()
        let (row, logits) = try s.prefill(prompt)
        let out = try s.generate(from: row, logits: logits, streams: group, config: sc)
        precondition(out.count == group && out.allSatisfy { $0.tokens.count == newTokens })
        return now() - t0
    }
    // Unshared: each sample prefills its own copy of the prompt, then all are decoded
    // together exactly as the shared case (one cache call per step), so only sharing differs.
    func unshared() throws -> Double {
        let s = Sampler(model: model, seed: 1)
        let t0 = now()
        var starts: [Sampler.GenerationStart] = []
        for k in 0..<group {
            let (row, logits) = try s.prefill(prompt)
            starts.append(Sampler.GenerationStart(row: row, logits: logits, streams: 1, seed: UInt64(k)))
        }
        let out = try s.generate(starts: starts, config: sc)
        precondition(out.count == group && out.allSatisfy { $0.count == 1 && $0[0].tokens.count == newTokens })
        return now() - t0
    }
    var bestS = Double.infinity, bestU = Double.infinity
    var sg = sgemmGFLOPs(n: 1024, reps: 2), bw = readGBps()
    for _ in 0..<reps {
        if only != "unshared" { bestS = min(bestS, try shared()) }
        if only != "shared" { bestU = min(bestU, try unshared()) }
        sg = max(sg, sgemmGFLOPs(n: 1024, reps: 1))
        bw = max(bw, readGBps())
    }
    let tokens = Double(group * newTokens)
    // Forward FLOPs: prefill (head on its last row), then per sample newTokens - 1 decoding
    // rows with the head (the last token's distribution is not needed), each attending to
    // its root path.
    let p = Double(promptLen), g = Double(group), t = Double(newTokens)
    let prefillPairs = p * (p + 1) / 2
    let decodePairs = g * ((p + 1) * (t - 1) + (t - 1) * t / 2)
    let decode = forwardFLOPs(cfg, rows: g * (t - 1), headRows: g * (t - 1), pairs: decodePairs)
    let prefillFLOPs = forwardFLOPs(cfg, rows: p, headRows: 1, pairs: prefillPairs)
    let sharedFLOPs = prefillFLOPs + decode
    let unsharedFLOPs = g * prefillFLOPs + decode
    // Roofline: each decoding step reads every weight once (the layers and the head), so it
    // takes at least max(its FLOPs at the sgemm rate, its weight bytes at the read bandwidth).
    let weightBytes = 4 * (cfg.layerFLOPsPerToken + cfg.headFLOPsPerRow) / 6
    let stepTime = max(decode / (t - 1) / (sg * 1e9), weightBytes / (bw * 1e9))
    let rooflineShared = prefillFLOPs / (sg * 1e9) + (t - 1) * stepTime
    let rooflineUnshared = g * prefillFLOPs / (sg * 1e9) + (t - 1) * stepTime
    print(String(format: "sgemm 1024^3 GFLOP/s %.1f  (1 thread, same run)", sg))
    print(String(format: "memory read GB/s     %.1f  (same run; %.0f MB of weights per decoding step)", bw, weightBytes / 1e6))
    if only != "unshared" {
        print(String(format: "generated tokens/s, shared prompt cache   %.0f", tokens / bestS))
        print(String(format: "sgemm bound tokens/s, shared              %.0f  (%.2f GFLOP)", tokens / (sharedFLOPs / sg / 1e9), sharedFLOPs / 1e9))
        print(String(format: "roofline bound tokens/s, shared           %.0f", tokens / rooflineShared))
    }
    if only != "shared" {
        print(String(format: "generated tokens/s, one copy per sample   %.0f", tokens / bestU))
        print(String(format: "sgemm bound tokens/s, one copy per sample %.0f  (%.2f GFLOP)", tokens / (unsharedFLOPs / sg / 1e9), unsharedFLOPs / 1e9))
        print(String(format: "roofline bound tokens/s, one copy/sample  %.0f", tokens / rooflineUnshared))
    }
    if only == "both" { print(String(format: "ratio shared/unshared                     %.2f", bestU / bestS)) }
    print(String(format: "peak memory (MiB)   %.0f", mib(peakRSSBytes())))
}

// MARK: - kat-bench group

/// A GRPO-shaped batch: `--prompts` prompts of `--prompt-len` tokens, `--samples` answers
/// of `--answer-len` tokens each, loss on the answers, advantages +-1 (on-policy, no
/// behaviour log-probs). Times the forward+backward of one update (policy loss included, no
/// optimizer) flat and as a trie, in turns; `--memory trie|flat` instead runs one whole
/// training step (SGD) of that packing in this fresh process and prints its peak memory.
func groupBenchmark() throws {
    BLASRuntime.setThreads(1)
    let size = sizeOption(), family = familyFor(size)
    let prompts = option("prompts", 2), samples = option("samples", 8)
    let promptLen = option("prompt-len", 128), answerLen = option("answer-len", 32), reps = option("repeat", 3)
    let cfg = shapeConfig(family, size, positions: promptLen + answerLen)
    let v = cfg.vocabSize
    var rng = SplitMix64(seed: 5)
    func toks(_ n: Int) -> [Int32] { (0..<n).map { _ in Int32(rng.next() % UInt64(min(v, 50000))) } }
    var trajs: [Trajectory] = []
    var groups: [[Int]] = []
    for g in 0..<prompts {
        let prompt = toks(promptLen)
        var members: [Int] = []
        for s in 0..<samples {
            members.append(trajs.count)
            trajs.append(Trajectory(id: "g\(g)-\(s)", group: "g\(g)", tokens: prompt + toks(answerLen),
                                    lossMask: [UInt8](repeating: 0, count: promptLen) + [UInt8](repeating: 1, count: answerLen)))
        }
        groups.append(members)
    }
    let advantages = trajs.indices.map { _ in rng.next() % 2 == 0 ? 1.0 : -1.0 }
    let batch = TrainingBatch(trajectories: trajs, groups: groups, advantages: advantages)
    let model = try cfg.makeModel()
    model.initialize(seed: 1)
    var oc = OptimizerConfig()
    oc.kind = .sgd
    oc.lr = 1e-4
    let optimizer = Optimizer(config: oc, layout: model.layout)
    func step(_ packing: StepConfig.Packing) -> TrainStep {
        var sc = StepConfig()
        sc.packing = packing
        sc.maxTokens = option("max-tokens", 16384)
        return TrainStep(model: model, optimizer: optimizer, loss: PolicyLossConfig(), config: sc)
    }
    let mode = stringOption("memory", "")
    if !mode.isEmpty {
        guard let packing = StepConfig.Packing(rawValue: mode) else { fail("--memory must be trie or flat") }
        let t0 = now()
        let stats = try step(packing).run(batch, lr: 1e-4)
        let t = now() - t0
        print("# \(cfg.shapeSummary); one \(packing.rawValue) training step (SGD) of \(prompts) x \(samples), \(promptLen) + \(answerLen) tokens")
        print(String(format: "step time (s)         %.3f  (loss %.4f, %d computed rows)", t, stats.loss, stats.tokensComputed))
        print(String(format: "activations (MiB)     %.0f", mib(model.workspaceBytes)))
        print(String(format: "parameters (MiB)      %.0f  (and as much again for the gradient)", mib(4 * model.params.count)))
        print(String(format: "peak memory (MiB)     %.0f", mib(peakRSSBytes())))
        return
    }
    print("# \(BLASRuntime.summary)")
    print("# model \(cfg.shapeSummary), \(prompts) prompts x \(samples) samples, \(promptLen)-token prompts, \(answerLen)-token answers, \(clockNote)")
    let steps: [(StepConfig.Packing, TrainStep)] = [(.flat, step(.flat)), (.trie, step(.trie))]
    let plans = try steps.map { try $0.1.plan(batch, shard: 0, of: 1)[0] }
    // FLOPs as the model computes them: layers per row, head per scored row, attention pairs.
    var flops: [Double] = [], rows: [Int] = []
    for (k, (_, st)) in steps.enumerated() {
        var f = 0.0, r = 0
        for mb in plans[k].microBatches {
            let t = plans[k].trie
            let scoring = mb.rowMap.indices.map { i in
                mb.carriesLoss[i] && t.terms(of: Int(mb.rowMap[i])).contains { plans[k].trajectories[Int($0.trajectory)].lossMask[Int($0.position)] == 1 }
            }
            let b = try PackedBatch(tokens: mb.tokens(of: t).map(Int.init), parents: mb.parents.map(Int.init), vocabSize: v,
                                    maxPositions: cfg.nPositions, scoring: scoring)
            f += cfg.trainingFLOPs(b)
            r += b.count
        }
        flops.append(f); rows.append(r)
        _ = st
    }
    var best = [Double](repeating: .infinity, count: 2)
    var sg = sgemmGFLOPs(n: 1024, reps: 2)
    for round in 0..<(reps + 1) { // round 0 allocates the workspaces
        for (k, (_, st)) in steps.enumerated() {
            model.zeroGrad()
            let t0 = now()
            for mb in plans[k].microBatches { _ = try st.accumulate(mb, of: plans[k]) }
            if round > 0 { best[k] = min(best[k], now() - t0) }
        }
        sg = max(sg, sgemmGFLOPs(n: 1024, reps: 1))
    }
    let flopRatio = flops[0] / flops[1], timeRatio = best[0] / best[1]
    print(String(format: "sgemm 1024^3 GFLOP/s  %.1f  (1 thread, same run)", sg))
    for (k, (packing, _)) in steps.enumerated() {
        print(String(format: "%@ rows %6d  forward+backward (s) %.3f  GFLOP %.1f  GFLOP/s %.1f  ratio/sgemm %.2f", packing.rawValue as NSString,
                     rows[k], best[k], flops[k] / 1e9, flops[k] / best[k] / 1e9, flops[k] / best[k] / 1e9 / sg))
    }
    print(String(format: "FLOP ratio flat/trie        %.2f", flopRatio))
    print(String(format: "time ratio flat/trie        %.2f", timeRatio))
    print(String(format: "time ratio / FLOP ratio     %.2f", timeRatio / flopRatio))
    print(String(format: "peak memory (MiB)   %.0f  (both packings in one process; --memory trie|flat for one step alone)", mib(peakRSSBytes())))
}
