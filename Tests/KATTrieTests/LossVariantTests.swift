import XCTest
import KATModel
import KATSupport
@testable import KATRL
@testable import KATTrie

/// Random per-token versions (several per trajectory, so shared tokens carry different
/// ones) and behaviour entropies on every loss token.
func withVersionsAndEntropies(_ trajs: [Trajectory], seed: UInt64) -> [Trajectory] {
    var rng = SplitMix64(seed: seed)
    return trajs.map { t in
        var t = t
        t.versions = t.lossMask.map { $0 == 1 ? 3 + Int(rng.next() % 3) : -1 }
        t.entropies = t.lossMask.map { $0 == 1 ? Float(3 * rng.nextDouble()) : .nan }
        t.policyVersion = t.versions?.filter { $0 >= 0 }.min()
        return t
    }
}

/// Groups of a batch (indices), in order of first appearance.
func groupIndices(_ trajs: [Trajectory]) -> [[Int]] {
    var index: [String: Int] = [:], out: [[Int]] = []
    for (s, key) in groupKeys(trajs).enumerated() {
        if let g = index[key] { out[g].append(s) } else { index[key] = out.count; out.append([s]) }
    }
    return out
}

/// The loss of every variant, written out plainly for each trajectory as its own flat
/// sequence: the reference the trie must equal.
struct FlatReference {
    let model: any LanguageModel

    /// log pi(token t | tokens before t) of one flat sequence, t = 1..<n (index 0 unused).
    func logprobs(_ t: Trajectory) throws -> [Double] {
        let batch = try PackedBatch(sequences: [t.tokens.map(Int.init)], vocabSize: model.config.vocabSize,
                                    maxPositions: model.config.nPositions)
        return model.forward(batch).logprobs.map(Double.init)
    }

    /// The k = ceil(fraction N) loss tokens of largest score, ties by flattened order.
    static func top(_ tokens: [(s: Int, t: Int)], _ fraction: Double, _ score: (Int, Int) -> Double) -> Set<[Int]> {
        let k = Int((fraction * Double(tokens.count) - 1e-9).rounded(.up))
        let ranked = tokens.enumerated().sorted { x, y in
            let a = score(x.element.s, x.element.t), b = score(y.element.s, y.element.t)
            return a != b ? a > b : x.offset < y.offset
        }
        return Set(ranked.prefix(k).map { [$0.element.s, $0.element.t] })
    }

    /// Loss and gradient of one update over the minibatch `sub` at the model's weights.
    /// - Parameters:
    ///   - stepStart: per trajectory, the log-probs at the step's start weights (nil when
    ///     the step has one update: they are the current ones).
    func update(_ sub: [Trajectory], advantages adv: [Double], config c: PolicyLossConfig,
                stepStart: [[Double]]?) throws -> (loss: Double, grads: [Float], truncated: Int, weightMax: Double) {
        let l = try sub.map { try logprobs($0) }
        let start = stepStart ?? l
        var tokens: [(s: Int, t: Int)] = []
        for (s, traj) in sub.enumerated() { for t in 0..<traj.tokens.count where traj.lossMask[t] == 1 { tokens.append((s, t)) } }
        func entropy(_ s: Int, _ t: Int) -> Double { Double(sub[s].entropies?[t] ?? .nan) }
        func advantage(_ s: Int, _ t: Int) -> Double {
            c.entropyBonusBeta > 0 ? adv[s] + min(c.entropyBonusBeta * entropy(s, t), abs(adv[s]) / c.entropyBonusKappa) : adv[s]
        }
        // Behaviour log-prob; missing: on-policy, the policy at the step's start.
        func b(_ s: Int, _ t: Int) -> Double { sub[s].logprobs.map { Double($0[t]) } ?? start[s][t] }
        let kept = c.entropyTokenFrac < 1 ? FlatReference.top(tokens, c.entropyTokenFrac, entropy) : nil
        var covered: Set<[Int]> = []
        if c.klCovFrac > 0 {
            var sumL = 0.0, sumA = 0.0
            for (s, t) in tokens { sumL += l[s][t]; sumA += advantage(s, t) }
            let meanL = sumL / Double(tokens.count), meanA = sumA / Double(tokens.count)
            covered = FlatReference.top(tokens, c.klCovFrac) { s, t in (l[s][t] - meanL) * (advantage(s, t) - meanA) }
        }
        let norm = LossNormaliser(sub)
        model.zeroGrad()
        var loss = 0.0, truncated = 0, weightMax = 0.0
        for (s, traj) in sub.enumerated() {
            _ = try logprobs(traj)   // the forward pass whose backward follows
            var d = [Float](repeating: 0, count: traj.tokens.count)
            let n = norm.weight(mode: c.mode, sequenceTokens: traj.lossTokens)
            for t in 0..<traj.tokens.count where traj.lossMask[t] == 1 {
                var iw = 1.0, anchor = b(s, t)
                if c.offPolicy == .decoupled {
                    anchor = start[s][t]                    // p
                    iw = exp(start[s][t] - b(s, t))         // w = exp(p - b)
                    if c.isCap > 0, iw > c.isCap { iw = c.isCap; truncated += 1 }
                    weightMax = max(weightMax, iw)
                }
                if let kept, !kept.contains([s, t]) { continue }
                let r = exp(l[s][t] - anchor), a = advantage(s, t)
                let unclipped = r * a, clipped = min(max(r, 1 - c.epsLow), 1 + c.epsHigh) * a
                // d(r A)/dl = r A; the clipped branch is flat in l.
                var term = -iw * min(unclipped, clipped), dterm = unclipped <= clipped ? -iw * unclipped : 0
                if covered.contains([s, t]) {
                    let k = l[s][t] - b(s, t)
                    term += c.klCovCoef * k * k / 2
                    dterm += c.klCovCoef * k
                }
                loss += n * term
                d[t] = Float(n * dterm)
            }
            model.backward(dlogprobs: d)
        }
        return (loss, model.grads.array, truncated, weightMax)
    }
}

/// The variants the trie must compute exactly as their flat formulas, alone and together.
let lossVariants: [(String, PolicyLossConfig)] = [
    ("clip-higher", PolicyLossConfig(epsLow: 0.2, epsHigh: 0.28)),
    ("decoupled", PolicyLossConfig(offPolicy: .decoupled)),
    ("decoupled, is_cap 2", PolicyLossConfig(offPolicy: .decoupled, isCap: 2)),
    ("entropy bonus", PolicyLossConfig(entropyBonusBeta: 0.4, entropyBonusKappa: 2)),
    ("high-entropy tokens", PolicyLossConfig(entropyTokenFrac: 0.4)),
    ("KL-Cov", PolicyLossConfig(klCovFrac: 0.3, klCovCoef: 0.7)),
    ("all", PolicyLossConfig(epsLow: 0.2, epsHigh: 0.28, offPolicy: .decoupled, isCap: 3, entropyBonusBeta: 0.3,
                             entropyBonusKappa: 1.5, entropyTokenFrac: 0.6, klCovFrac: 0.2, klCovCoef: 0.5)),
]

final class LossVariantTests: XCTestCase {
    /// A tree-shaped batch: groups sharing prompts, multi-turn histories and branches, with
    /// shared tokens of different behaviour log-probs, versions, entropies and advantages.
    func batch(seed: UInt64) -> TrainingBatch {
        var f = TrajectoryFactory(seed: seed, vocab: 13)
        let trajs = withVersionsAndEntropies(f.groups() + f.multiTurn() + f.branching(), seed: seed &+ 100)
        return TrainingBatch(trajectories: trajs, groups: groupIndices(trajs), advantages: trajs.map { $0.advantage ?? 0 })
    }

    /// Runs a step as `shards` trainers would (each its plan; KL-Cov's log-probs summed over
    /// them), and at each update compares the loss and gradient with the flat formula at
    /// the same weights; the step's start log-probs are the flat model's at the start.
    func checkStep(_ b: TrainingBatch, _ cfg: PolicyLossConfig, minibatches: Int, epochs: Int, shards: Int,
                   family: ModelFamily = .gpt2, _ what: String) throws {
        let m = try trieTestModel(seed: 3, family: family)
        let flatModel = try trieTestModel(seed: 3, family: family)
        var opt = OptimizerConfig()
        opt.kind = .sgd; opt.gradClip = 0
        var stepConfig = StepConfig()
        stepConfig.minibatches = minibatches; stepConfig.ppoEpochs = epochs; stepConfig.maxTokens = 24
        let step = TrainStep(model: m, optimizer: Optimizer(config: opt, layout: m.layout), loss: cfg, config: stepConfig)
        let reference = FlatReference(model: flatModel)
        let plans = try (0..<shards).map { try step.plan(b, shard: $0, of: shards) }
        let several = plans[0].count > 1
        let stepStart = several ? try b.trajectories.map { try reference.logprobs($0) } : nil
        XCTAssertEqual(Set(plans[0].map(\.minibatch)).count, minibatches, what)
        var clipped = 0.0, truncated = 0.0
        for u in plans[0].indices {
            var updates = plans.map { $0[u] }
            if updates[0].needsCurrentLogprobs {
                var l = [Double](repeating: 0, count: updates[0].tokenOffsets.last ?? 0)
                for part in updates { l = zip(l, try step.currentLogprobs(part)).map { $0 + $1 } }
                updates = updates.map { step.choosingKLCovTokens($0, logprobs: l) }
            }
            // Each selection keeps some tokens and leaves out others: the test is not vacuous.
            for selection in [updates[0].terms.contributes, updates[0].terms.klCovered].compactMap({ $0 }) {
                var flags: [Bool] = []
                for (t, f) in zip(updates[0].trajectories, selection) { for k in f.indices where t.lossMask[k] == 1 { flags.append(f[k]) } }
                XCTAssertTrue(flags.contains(true) && flags.contains(false), what)
            }
            m.zeroGrad()
            var tally = UpdateTally()
            for part in updates { for mb in part.microBatches { tally += try step.accumulate(mb, of: part) } }
            let trieGrads = m.grads.array
            flatModel.params.copy(from: m.params)
            let idx = KATTrie.minibatches(b.groups, minibatches)[updates[0].minibatch]
            let flat = try reference.update(idx.map { b.trajectories[$0] }, advantages: idx.map { b.advantages[$0] }, config: cfg,
                                            stepStart: stepStart.map { s in idx.map { s[$0] } })
            let label = "\(what) update \(u) (epoch \(updates[0].epoch), minibatch \(updates[0].minibatch))"
            // Sums of O(100) float32 terms of size O(1): 1e-5 relative is ~10x round-off.
            XCTAssertEqual(tally.loss, flat.loss, accuracy: 1e-5 * max(1, abs(flat.loss)), label)
            assertGradientsClose(trieGrads, flat.grads, m.layout, label)
            if cfg.offPolicy == .decoupled {
                XCTAssertEqual(tally.isTruncatedTokens, Double(flat.truncated), label)
                XCTAssertEqual(tally.isWeightMax, flat.weightMax, accuracy: 1e-5 * flat.weightMax, label)
            }
            clipped += tally.clippedTokens; truncated += tally.isTruncatedTokens
            _ = step.apply(tally, lr: 0.05)
        }
        // (The decoupled ratio against the step's start weights is 1 in a step's only update.)
        if several || cfg.offPolicy == .ppo { XCTAssertGreaterThan(clipped, 0, "\(what): some ratios clip") }
        if cfg.isCap > 0 { XCTAssertGreaterThan(truncated, 0, "\(what): some weights are truncated") }
    }

    /// Every variant, alone and together, gives on the trie the loss and gradient of its
    /// flat formula, for each loss mode, 2 minibatches x 2 PPO epochs and 1 or 3 trainers.
    func testEachVariantOnTheTrieEqualsItsFlatFormula() throws {
        for (name, base) in lossVariants {
            for mode in LossMode.allCases {
                var cfg = base
                cfg.mode = mode
                for shards in [1, 3] {
                    try checkStep(batch(seed: 11), cfg, minibatches: 2, epochs: 2, shards: shards,
                                  "\(name) \(mode.rawValue) \(shards) trainers")
                }
            }
        }
    }

    /// With one update per step the decoupled loss takes p from the update's own forward
    /// pass; the other variants too agree with their flat formulas there.
    func testOneUpdatePerStepEqualsTheFlatFormula() throws {
        for (name, cfg) in lossVariants {
            try checkStep(batch(seed: 12), cfg, minibatches: 1, epochs: 1, shards: 2, "\(name) one update")
        }
    }

    /// The Llama family computes the combined variants on the trie as flat too.
    func testAllVariantsOnLlama() throws {
        guard let all = lossVariants.last?.1 else { return }
        try checkStep(batch(seed: 13), all, minibatches: 2, epochs: 2, shards: 2, family: .llama, "all, llama")
    }

    /// Per-token variants need the behaviour entropy of every loss token: a trajectory
    /// without `entropies` is refused, naming its source and the setting; demonstrations
    /// (a supervised batch) train with PPO-clip alone and need none.
    func testMissingEntropiesAreRefusedExceptForDemonstrations() throws {
        let m = try trieTestModel(seed: 1)
        var b = batch(seed: 5)
        b.trajectories[2].entropies = nil
        b.trajectories[2].source = "batch.jsonl:3"
        for cfg in [PolicyLossConfig(entropyBonusBeta: 0.1), PolicyLossConfig(entropyTokenFrac: 0.5)] {
            let step = TrainStep(model: m, optimizer: Optimizer(config: OptimizerConfig(), layout: m.layout), loss: cfg, config: StepConfig())
            XCTAssertThrowsError(try step.plan(b, shard: 0, of: 1)) { e in
                XCTAssertTrue("\(e)".contains("field entropies: missing") && "\(e)".contains(b.trajectories[2].source), "\(e)")
            }
            var demos = b
            demos.supervised = true
            let plan = try step.plan(demos, shard: 0, of: 1)
            XCTAssertEqual(plan[0].loss, PolicyLossConfig(), "demonstrations train with the plain loss")
        }
    }
}

// MARK: - Every variant off is the loss as it was

/// The loss as it was before the variants existed, kept verbatim: the reference for
/// "every variant off changes nothing".
func policyLossBeforeVariants(trie: Trie, trajectories: [Trajectory], advantages: [Double], logprobs: [Float],
                              config: PolicyLossConfig, normaliser: LossNormaliser, shard: TrieShard? = nil,
                              referenceLogprobs: [Float]? = nil) -> PolicyLossResult {
    let rows = shard?.count ?? trie.count
    var d = [Float](repeating: 0, count: rows)
    var loss = 0.0, tokens = 0, clippedCount = 0, kl = 0.0, klRef = 0.0
    let weights = trajectories.map { normaliser.weight(mode: config.mode, sequenceTokens: $0.lossTokens) }
    for u in 0..<rows {
        if let shard, !shard.carriesLoss[u] { continue }
        let l = Double(logprobs[u])
        var du = 0.0
        for term in trie.terms(of: shard.map { Int($0.rowMap[u]) } ?? u) {
            let s = Int(term.trajectory), t = Int(term.position)
            let traj = trajectories[s]
            guard traj.lossMask[t] == 1 else { continue }
            let b = traj.logprobs.map { Double($0[t]) } ?? l
            let term = ppoClipTerm(l: l, b: b, advantage: advantages[s], epsLow: config.epsLow, epsHigh: config.epsHigh)
            let w = weights[s]
            loss += w * term.loss
            du += w * term.dl
            tokens += 1
            if term.clipped { clippedCount += 1 }
            let logRatio = l - b
            kl += exp(logRatio) - 1 - logRatio
            if let referenceLogprobs, config.klCoef > 0 {
                let d = Double(referenceLogprobs[u]) - l
                let k3 = exp(d) - 1 - d
                klRef += k3
                loss += w * config.klCoef * k3
                du += w * config.klCoef * (1 - exp(d))
            }
        }
        d[u] = Float(du)
    }
    return PolicyLossResult(loss: loss, dlogprobs: d, lossTokens: tokens, clippedTokens: clippedCount, klBehaviourSum: kl,
                            klReferenceSum: klRef)
}

final class VariantsOffTests: XCTestCase {
    /// With every variant at its off value (explicitly, and by default) the loss, its
    /// derivative and its counts are bitwise those of the loss before the variants, on
    /// whole tries and on shards, for each mode, with and without the KL penalty.
    func testEveryVariantOffIsTheOldLossBitwise() throws {
        let off = PolicyLossConfig(offPolicy: .ppo, isCap: 0, entropyBonusBeta: 0, entropyBonusKappa: 2, entropyTokenFrac: 1,
                                   klCovFrac: 0, klCovCoef: 1)
        XCTAssertEqual(off, PolicyLossConfig(), "the defaults are the off values")
        for seed in UInt64(1)...3 {
            var f = TrajectoryFactory(seed: seed, vocab: 13)
            let trajs = withVersionsAndEntropies(f.groups() + f.multiTurn() + f.branching(), seed: seed)
            let trie = Trie(trajs)
            var rng = SplitMix64(seed: seed)
            let adv = trajs.map { $0.advantage ?? 0 }
            for mode in LossMode.allCases {
                for klCoef in [0.0, 0.3] {
                    var cfg = off
                    cfg.mode = mode; cfg.klCoef = klCoef; cfg.epsHigh = 0.28
                    for shard in [nil] + trie.shards(3).map(Optional.some) {
                        let rows = shard?.count ?? trie.count
                        let lp = (0..<rows).map { _ in Float(-4 * rng.nextDouble()) }
                        let ref = (0..<rows).map { _ in Float(-4 * rng.nextDouble()) }
                        let norm = LossNormaliser(trajs)
                        let new = policyLoss(trie: trie, trajectories: trajs, advantages: adv, logprobs: lp, config: cfg, normaliser: norm,
                                             shard: shard, referenceLogprobs: ref)
                        let old = policyLossBeforeVariants(trie: trie, trajectories: trajs, advantages: adv, logprobs: lp, config: cfg,
                                                           normaliser: norm, shard: shard, referenceLogprobs: ref)
                        let what = "seed \(seed) \(mode.rawValue) kl \(klCoef) shard \(shard?.count ?? -1)"
                        XCTAssertEqual(new.loss.bitPattern, old.loss.bitPattern, what)
                        XCTAssertEqual(new.dlogprobs.map(\.bitPattern), old.dlogprobs.map(\.bitPattern), what)
                        XCTAssertEqual(new.klBehaviourSum.bitPattern, old.klBehaviourSum.bitPattern, what)
                        XCTAssertEqual(new.klReferenceSum.bitPattern, old.klReferenceSum.bitPattern, what)
                        XCTAssertEqual(new.clippedTokens, old.clippedTokens, what)
                        XCTAssertEqual(new.lossTokens, old.lossTokens, what)
                    }
                }
            }
        }
    }

    /// A step's plan with every variant off carries no proximal log-probs and no selections.
    func testAPlanWithVariantsOffCarriesNoTerms() throws {
        let m = try trieTestModel(seed: 2)
        var f = TrajectoryFactory(seed: 2, vocab: 13)
        let trajs = f.groups()
        var sc = StepConfig()
        sc.minibatches = 2; sc.ppoEpochs = 2
        let step = TrainStep(model: m, optimizer: Optimizer(config: OptimizerConfig(), layout: m.layout), loss: PolicyLossConfig(), config: sc)
        for u in try step.plan(TrainingBatch(trajectories: trajs, groups: groupIndices(trajs), advantages: trajs.map { _ in 1 }), shard: 0, of: 1) {
            XCTAssertNil(u.terms.proximal); XCTAssertNil(u.terms.contributes); XCTAssertNil(u.terms.klCovered)
            XCTAssertFalse(u.needsCurrentLogprobs)
        }
    }
}

// MARK: - The decoupled loss

final class DecoupledLossTests: XCTestCase {
    func step(_ cfg: PolicyLossConfig, model m: any LanguageModel, minibatches: Int = 2, epochs: Int = 2) -> TrainStep {
        var sc = StepConfig()
        sc.minibatches = minibatches; sc.ppoEpochs = epochs
        var opt = OptimizerConfig()
        opt.kind = .sgd; opt.gradClip = 0
        return TrainStep(model: m, optimizer: Optimizer(config: opt, layout: m.layout), loss: cfg, config: sc)
    }

    /// Runs the whole step and returns the final weights and per-update losses.
    func run(_ cfg: PolicyLossConfig, _ b: TrainingBatch, seed: UInt64) throws -> ([Float], StepStats) {
        let m = try trieTestModel(seed: seed)
        let stats = try step(cfg, model: m).run(b, lr: 0.05)
        return (m.params.array, stats)
    }

    /// On-policy data (behaviour = the policy at the step's start) makes the importance
    /// weight 1, and the decoupled loss is PPO: the same weights after 2 minibatches x 2
    /// epochs, whether the behaviour log-probs are missing or given equal to p.
    func testOnPolicyDataMakesDecoupledEqualPPO() throws {
        var f = TrajectoryFactory(seed: 4, vocab: 13)
        var trajs = f.groups() + f.branching()
        for i in trajs.indices { trajs[i].logprobs = nil }
        let m = try trieTestModel(seed: 4)
        let p = try step(PolicyLossConfig(), model: m).logprobsAtCurrentWeights(trajs)
        var given = trajs
        for i in given.indices { given[i].logprobs = p[i] }
        for data in [trajs, given] {
            let b = TrainingBatch(trajectories: data, groups: groupIndices(data), advantages: data.map { $0.advantage ?? 0 })
            for mode in LossMode.allCases {
                let (ppo, sp) = try run(PolicyLossConfig(mode: mode), b, seed: 4)
                let (dec, sd) = try run(PolicyLossConfig(mode: mode, offPolicy: .decoupled, isCap: 5), b, seed: 4)
                // Given p is the same trie forward the decoupled step recomputes: equal to round-off.
                let worst = zip(ppo, dec).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
                XCTAssertLessThanOrEqual(worst, 1e-6, "\(mode.rawValue)")
                XCTAssertEqual(sp.loss, sd.loss, accuracy: 1e-6 * max(1, abs(sp.loss)))
                XCTAssertEqual(sd.isWeightMean ?? 0, 1, accuracy: 1e-6, "w = 1 on-policy")
                XCTAssertEqual(sd.isTruncatedFrac, 0)
                XCTAssertNil(sp.isWeightMean, "ppo has no importance weights")
            }
        }
    }

    /// Off-policy data: the importance weight is exp(p - b), truncated at is_cap, and held
    /// constant: the step's metrics report it over the loss tokens, and with a cap below
    /// every weight the loss is the cap times PPO-clip against p.
    func testTheImportanceWeightIsExpPMinusBTruncated() throws {
        var f = TrajectoryFactory(seed: 6, vocab: 13)
        let trajs = f.groups() + f.multiTurn()
        let b = TrainingBatch(trajectories: trajs, groups: groupIndices(trajs), advantages: trajs.map { $0.advantage ?? 0 })
        let m = try trieTestModel(seed: 6)
        let p = try step(PolicyLossConfig(), model: m).logprobsAtCurrentWeights(trajs)
        var weights: [Double] = []
        for (s, t) in trajs.enumerated() {
            // Missing behaviour log-probs are on-policy: b = p, weight 1.
            for k in 0..<t.tokens.count where t.lossMask[k] == 1 { weights.append(exp(Double(p[s][k]) - Double(t.logprobs?[k] ?? p[s][k]))) }
        }
        for cap in [0.0, 4.0] {
            let (_, stats) = try run(PolicyLossConfig(offPolicy: .decoupled, isCap: cap), b, seed: 6)
            let capped = weights.map { cap > 0 ? min($0, cap) : $0 }
            XCTAssertEqual(stats.isWeightMean ?? -1, capped.reduce(0, +) / Double(capped.count), accuracy: 1e-4 * (stats.isWeightMean ?? 1))
            XCTAssertEqual(stats.isWeightMax ?? -1, capped.max() ?? 0, accuracy: 1e-4 * (capped.max() ?? 1))
            XCTAssertEqual(stats.isTruncatedFrac ?? -1, Double(weights.filter { cap > 0 && $0 > cap }.count) / Double(weights.count),
                           accuracy: 1e-12)
        }
        XCTAssertGreaterThan(weights.filter { $0 > 4 }.count, 0, "some weights are truncated")
        XCTAssertGreaterThan(weights.filter { $0 < 4 }.count, 0, "and some are not")

        // With a cap below every weight, w is the cap everywhere: L = cap x PPO-clip(l vs p).
        let trie = Trie(trajs)
        let lp = m.forward(try trie.packedBatch(config: m.config)).logprobs
        let cap = (weights.min() ?? 1) / 2
        var againstP = trajs
        for i in againstP.indices { againstP[i].logprobs = p[i] }
        let norm = LossNormaliser(trajs), adv = b.advantages
        let dec = policyLoss(trie: trie, trajectories: trajs, advantages: adv, logprobs: lp,
                             config: PolicyLossConfig(offPolicy: .decoupled, isCap: cap), normaliser: norm, terms: TokenTerms(proximal: p))
        let ppo = policyLoss(trie: trie, trajectories: againstP, advantages: adv, logprobs: lp, config: PolicyLossConfig(), normaliser: norm)
        XCTAssertEqual(dec.loss, cap * ppo.loss, accuracy: 1e-9 * max(1, abs(ppo.loss)))
        XCTAssertEqual(dec.isTruncatedTokens, dec.lossTokens)
        for (x, y) in zip(dec.dlogprobs, ppo.dlogprobs) { XCTAssertEqual(Double(x), cap * Double(y), accuracy: 1e-6 * max(1, abs(cap * Double(y)))) }
    }

    /// Trained trajectories whose loss tokens came from several versions are counted once per step.
    func testMixedVersionTrajectoriesAreCounted() throws {
        var f = TrajectoryFactory(seed: 8, vocab: 13)
        var trajs = f.groups()
        for i in trajs.indices { trajs[i].versions = trajs[i].lossMask.map { $0 == 1 ? 7 : -1 } }
        let positions = trajs[1].lossMask.indices.filter { trajs[1].lossMask[$0] == 1 }
        trajs[1].versions?[positions[positions.count - 1]] = 8
        let last = trajs[5].lossMask.lastIndex(of: 1) ?? 0
        trajs[5].versions?[last] = 9
        let b = TrainingBatch(trajectories: trajs, groups: groupIndices(trajs), advantages: trajs.map { _ in 0.5 })
        let (_, stats) = try run(PolicyLossConfig(), b, seed: 8)
        XCTAssertEqual(stats.mixedVersionTrajectories, 2)
    }
}

final class VariantDerivativeTests: XCTestCase {
    /// dL/dl of every variant matches central differences of L in each row's log-prob, with
    /// the proximal log-probs, weights and selections held fixed (they are constants of the
    /// loss), on a shared-prefix trie.
    func testEachVariantsDerivativeMatchesFiniteDifferences() {
        var f = TrajectoryFactory(seed: 5, vocab: 13)
        let trajs = withVersionsAndEntropies(f.branching(), seed: 5)
        let trie = Trie(trajs)
        var rng = SplitMix64(seed: 8)
        let lp = (0..<trie.count).map { _ in Float(-3 * rng.nextDouble()) }
        let proximal = trajs.map { t in t.tokens.indices.map { _ in Float(-3 * rng.nextDouble()) } }
        let adv = trajs.map { $0.advantage ?? 0 }
        for (name, cfg) in lossVariants {
            var terms = TokenTerms(proximal: cfg.offPolicy == .decoupled ? proximal : nil,
                                   contributes: cfg.selectsHighEntropyTokens ? highEntropyTokens(trajs, fraction: cfg.entropyTokenFrac) : nil)
            if cfg.usesKLCov {
                let l = trajs.map { t in t.tokens.map { _ in -1.0 } }
                terms.klCovered = klCovTokens(trajs, logprobs: l, advantages: tokenAdvantages(trajs, advantages: adv, config: cfg),
                                              fraction: cfg.klCovFrac)
            }
            let norm = LossNormaliser(trajs)
            func L(_ x: [Float]) -> PolicyLossResult {
                policyLoss(trie: trie, trajectories: trajs, advantages: adv, logprobs: x, config: cfg, normaliser: norm, terms: terms)
            }
            let base = L(lp)
            for u in 0..<trie.count {
                var up = lp, down = lp
                up[u] += 1e-3; down[u] -= 1e-3
                let (lu, ld) = (L(up), L(down))
                // A row whose ratio sits within 1e-3 of a clip kink is one-sided there: skipped.
                if lu.clippedTokens != ld.clippedTokens || lu.clippedTokens != base.clippedTokens { continue }
                let fd = (lu.loss - ld.loss) / 2e-3
                XCTAssertEqual(Double(base.dlogprobs[u]), fd, accuracy: 1e-4 + 1e-3 * abs(fd), "\(name) row \(u)")
            }
        }
    }
}
