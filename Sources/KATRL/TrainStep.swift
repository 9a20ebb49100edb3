import Foundation
import KATModel
import KATSupport
import KATTrie

/// Settings of one training step (data.packing, batch.max_tokens, batch.minibatches,
/// loss.ppo_epochs, rollout.temperature).
public struct StepConfig: Sendable, Equatable {
    public enum Packing: String, Sendable, CaseIterable { case trie, flat }
    public var packing: Packing = .trie
    /// Trie rows per micro-batch (repeated prefixes included).
    public var maxTokens = 16384
    /// tau of pi_tau = softmax(logits / tau): the sampling temperature, so that the
    /// on-policy ratio is exactly 1.
    public var temperature: Float = 1
    public var minibatches = 1
    public var ppoEpochs = 1
    public init() {}
}

/// A step's batch: trajectories, their whole groups (indices into `trajectories`), and the
/// advantage A_s of each trajectory (after any scaling).
public struct TrainingBatch: Sendable {
    public var trajectories: [Trajectory]
    public var groups: [[Int]]
    public var advantages: [Double]
    /// Demonstrations (a supervised warm start): trained with PPO-clip alone, since the
    /// off-policy and entropy variants need behaviour data that demonstrations lack.
    public var supervised: Bool
    public init(trajectories: [Trajectory], groups: [[Int]], advantages: [Double], supervised: Bool = false) {
        self.trajectories = trajectories; self.groups = groups; self.advantages = advantages; self.supervised = supervised
    }
}

/// One optimizer update of a step: a minibatch of whole groups in one PPO epoch, packed
/// into a trie (or flat), with this trainer's micro-batches of it.
public struct UpdatePlan: Sendable {
    public let epoch: Int
    public let minibatch: Int
    public let trie: Trie
    public let trajectories: [Trajectory]
    public let advantages: [Double]
    /// Counted over the whole minibatch, on every trainer alike.
    public let normaliser: LossNormaliser
    /// This trainer's shard, in micro-batches of at most `maxTokens` rows.
    public let microBatches: [TrieShard]
    /// The loss this update trains with (the step's, or PPO-clip alone for demonstrations).
    public let loss: PolicyLossConfig
    /// Proximal log-probs and per-token selections, the same on every trainer: taken from
    /// the whole minibatch, never from one trainer's shard.
    public internal(set) var terms: TokenTerms

    /// Where trajectory s's positions start in the flattened layout of
    /// `TrainStep.currentLogprobs` (trajectory after trajectory, every position).
    public var tokenOffsets: [Int] {
        var o = [0]
        for t in trajectories { o.append((o.last ?? 0) + t.tokens.count) }
        return o
    }

    /// Whether the loss needs every loss token's current log-prob over the whole minibatch
    /// before it is computed (KL-Cov): the caller then runs `TrainStep.currentLogprobs`,
    /// sums the result over trainers, and passes it to `TrainStep.choosingKLCovTokens`.
    public var needsCurrentLogprobs: Bool { loss.usesKLCov && terms.klCovered == nil }
}

/// What the micro-batches of one update add up to: on one trainer, then (after
/// `values` are summed over trainers) on all of them.
public struct UpdateTally: Sendable, Equatable {
    /// This part's share of L.
    public var loss = 0.0
    public var lossTokens = 0.0
    public var clippedTokens = 0.0
    /// Sum over loss tokens of the k3 estimate of KL(behaviour || current).
    public var klBehaviourSum = 0.0
    /// Sum of the current log-probs of the loss tokens.
    public var logprobSum = 0.0
    /// Rows computed, repeated prefixes included.
    public var computedRows = 0.0
    /// Sum over loss tokens of the k3 estimate of KL(current || reference).
    public var klReferenceSum = 0.0
    /// Decoupled loss: loss tokens with an importance weight, the sum of their weights,
    /// and how many were truncated at loss.is_cap.
    public var isWeightTokens = 0.0
    public var isWeightSum = 0.0
    public var isTruncatedTokens = 0.0
    /// The largest importance weight: a maximum, not a sum, so it is not in `values`;
    /// combine it over trainers with a max.
    public var isWeightMax = 0.0

    public init() {}

    /// The fields that add up, as one vector, for a sum over trainers.
    public var values: [Double] {
        get { [loss, lossTokens, clippedTokens, klBehaviourSum, logprobSum, computedRows, klReferenceSum, isWeightTokens, isWeightSum,
               isTruncatedTokens] }
        set {
            precondition(newValue.count == 10, "UpdateTally.values: 10 numbers")
            loss = newValue[0]; lossTokens = newValue[1]; clippedTokens = newValue[2]; klBehaviourSum = newValue[3]
            logprobSum = newValue[4]; computedRows = newValue[5]; klReferenceSum = newValue[6]
            isWeightTokens = newValue[7]; isWeightSum = newValue[8]; isTruncatedTokens = newValue[9]
        }
    }

    public static func += (a: inout UpdateTally, b: UpdateTally) {
        a.values = zip(a.values, b.values).map { $0 + $1 }
        a.isWeightMax = max(a.isWeightMax, b.isWeightMax)
    }
}

/// The forward half of one micro-batch: its tally, and the backward pass to run.
public struct MicroBatchPass {
    public let tally: UpdateTally
    public let backward: BackwardPass
}

/// Whether an update was applied, and the gradient norm it saw (before clipping).
public struct UpdateOutcome: Sendable {
    public var gradNorm: Double
    public var applied: Bool
}

/// Everything a training step reports of its own maths: averages over its updates.
public struct StepStats: Sendable {
    public var loss = 0.0
    public var gradNorm = 0.0
    public var lr = 0.0
    public var clipFrac = 0.0
    public var klBehaviour = 0.0
    public var klReference = 0.0
    public var logprobMean = 0.0
    public var tokensFlat = 0
    public var tokensTrie = 0
    public var tokensComputed = 0
    /// Optimizer updates applied (the policy version advances by this many).
    public var updates = 0
    /// Whether any update was skipped for a non-finite loss or gradient.
    public var skipped = false
    /// Decoupled loss: mean and largest importance weight over the step's loss tokens, and
    /// the share truncated at loss.is_cap; nil when the loss has no importance weights.
    public var isWeightMean: Double?
    public var isWeightMax: Double?
    public var isTruncatedFrac: Double?
    /// Trained trajectories whose loss tokens were sampled by more than one policy version.
    public var mixedVersionTrajectories = 0
    public init() {}

    // Running sums; `finish` turns them into the averages above.
    var lossSum = 0.0, normSum = 0.0, tokens = 0.0, clipped = 0.0, kl = 0.0, klRef = 0.0, lpSum = 0.0, lpCount = 0.0, parts = 0
    var isTokens = 0.0, isSum = 0.0, isTruncated = 0.0, isMax = 0.0

    /// Adds one update's summed tally and outcome.
    public mutating func add(_ update: UpdatePlan, _ tally: UpdateTally, _ outcome: UpdateOutcome) {
        parts += 1
        lossSum += tally.loss; normSum += outcome.gradNorm
        tokens += tally.lossTokens; clipped += tally.clippedTokens; kl += tally.klBehaviourSum; klRef += tally.klReferenceSum
        if outcome.applied { updates += 1 } else { skipped = true }
        if update.epoch == 0 {
            lpSum += tally.logprobSum; lpCount += tally.lossTokens
            tokensComputed += Int(tally.computedRows)
            tokensTrie += update.trie.count
            tokensFlat += update.trie.flatTokens
            // The importance weights are fixed for the whole step: the first epoch sees each once.
            isTokens += tally.isWeightTokens; isSum += tally.isWeightSum; isTruncated += tally.isTruncatedTokens
            isMax = max(isMax, tally.isWeightMax)
            mixedVersionTrajectories += update.trajectories.filter(\.hasMixedVersions).count
        }
    }

    /// The averages over the updates added.
    public mutating func finish() {
        let n = Double(max(1, parts))
        loss = lossSum / n
        gradNorm = normSum / n
        clipFrac = tokens > 0 ? clipped / tokens : 0
        klBehaviour = tokens > 0 ? kl / tokens : 0
        klReference = tokens > 0 ? klRef / tokens : 0
        logprobMean = lpCount > 0 ? lpSum / lpCount : 0
        if isTokens > 0 {
            isWeightMean = isSum / isTokens
            isWeightMax = isMax
            isTruncatedFrac = isTruncated / isTokens
        }
    }
}

/// The maths of one training step, in pieces that a caller runs in order:
///
///     let updates = try step.plan(batch, shard: i, of: T)
///     for var u in updates {
///         if u.needsCurrentLogprobs {                      // KL-Cov: choose over the whole minibatch
///             var l = try step.currentLogprobs(u)          // this trainer's rows
///             (sum l over the T trainers)
///             u = step.choosingKLCovTokens(u, logprobs: l)
///         }
///         model.zeroGrad()
///         for mb in u.microBatches { tally += try step.accumulate(mb, of: u) }   // or forward + backward.step()
///         (sum model.grads and tally.values over the T trainers; tally.isWeightMax: max)
///         outcome = step.apply(tally, lr: lr)
///     }
///
/// Nothing here communicates: the caller decides what happens between the pieces.
public final class TrainStep {
    public let model: any LanguageModel
    public let optimizer: Optimizer
    public let loss: PolicyLossConfig
    public let config: StepConfig
    /// Consecutive skipped updates (non-finite loss or gradient).
    public private(set) var skippedInARow = 0
    /// The initial model, held only when loss.kl_coef > 0.
    let reference: (any LanguageModel)?

    public init(model: any LanguageModel, optimizer: Optimizer, loss: PolicyLossConfig, config: StepConfig) {
        self.model = model; self.optimizer = optimizer; self.loss = loss; self.config = config
        if loss.klCoef > 0, let copy = try? model.config.makeModel() {
            copy.params.copy(from: model.params)
            copy.keepsHeadLogits = false // scored, never differentiated
            reference = copy
        } else {
            reference = nil
        }
    }

    func trie(_ trajs: [Trajectory]) -> Trie {
        config.packing == .flat ? Trie.flat(sequences: trajs.map(\.tokens)) : Trie(trajs)
    }

    /// The current weights' log-prob of every loss token of `trajs` (NaN elsewhere), per
    /// trajectory and position, from one pass over their trie in micro-batches.
    func logprobsAtCurrentWeights(_ trajs: [Trajectory]) throws -> [[Float]] {
        var out = trajs.map { [Float](repeating: .nan, count: $0.tokens.count) }
        let t = trie(trajs)
        for shard in t.shards(1, maxTokens: config.maxTokens)[0] where shard.count > 0 {
            let lp = model.forward(try shard.packedBatch(of: t, config: model.config), temperature: config.temperature).logprobs
            for (i, row) in shard.rowMap.enumerated() {
                for term in t.terms(of: Int(row)) {
                    let s = Int(term.trajectory), t = Int(term.position)
                    if trajs[s].lossMask[t] == 1 { out[s][t] = lp[i] }
                }
            }
        }
        return out
    }

    /// Current log-probs for every loss token of `trajs` that has no behaviour log-prob,
    /// computed before any update of this step (PPO's "old" policy).
    func fillOnPolicyLogprobs(_ trajs: inout [Trajectory]) throws {
        let missing = trajs.indices.filter { trajs[$0].logprobs == nil }
        guard !missing.isEmpty else { return }
        for (k, lp) in try logprobsAtCurrentWeights(missing.map { trajs[$0] }).enumerated() { trajs[missing[k]].logprobs = lp }
    }

    /// Checks that every trajectory carries what the loss variants read.
    /// - Throws: `AdvantageError.missingField` naming the trajectory's source, the field and the setting.
    func checkInputs(_ trajs: [Trajectory], loss: PolicyLossConfig) throws(AdvantageError) {
        guard loss.needsTokenEntropies else { return }
        let setting = loss.usesEntropyBonus ? "advantage.entropy_bonus_beta is above 0" : "loss.entropy_token_frac is below 1"
        for t in trajs where t.entropies == nil && t.lossTokens > 0 {
            throw .missingField(source: t.source, field: "entropies", setting: setting)
        }
    }

    /// Plans a step: minibatches of whole groups, each packed once and split into `shards`
    /// shards of whole subtrees; this trainer (`shard`) gets its micro-batches. With several
    /// updates per step (minibatches or PPO epochs) the log-probs that are missing are
    /// filled first from the current weights, so every update clips against the same policy;
    /// the decoupled loss takes its proximal log-probs p of every trajectory there too
    /// (with one update, that update's own forward pass runs at the step's start weights).
    /// High-entropy tokens are chosen per minibatch from the trajectories' `entropies`.
    /// - Returns: the updates in order: epoch by epoch, minibatch by minibatch.
    /// - Throws: `AdvantageError` when a variant's input is missing; model errors.
    public func plan(_ batch: TrainingBatch, shard: Int, of shards: Int) throws -> [UpdatePlan] {
        let lossConfig = batch.supervised ? PolicyLossConfig(mode: loss.mode, epsLow: loss.epsLow, epsHigh: loss.epsHigh, klCoef: loss.klCoef)
                                          : loss
        try checkInputs(batch.trajectories, loss: lossConfig)
        var trajs = batch.trajectories
        let parts = KATTrie.minibatches(batch.groups, config.minibatches)
        let several = config.ppoEpochs > 1 || parts.count > 1
        var proximal: [[Float]]?
        if lossConfig.offPolicy == .decoupled {
            // Missing behaviour log-probs are then p itself (weight 1).
            if several { proximal = try logprobsAtCurrentWeights(trajs) }
        } else if several {
            try fillOnPolicyLogprobs(&trajs)
        }
        let packed = parts.map { idx -> (Trie, [Trajectory], [Double], TokenTerms) in
            let sub = idx.map { trajs[$0] }
            let terms = TokenTerms(proximal: proximal.map { p in idx.map { p[$0] } },
                                   contributes: lossConfig.selectsHighEntropyTokens ? highEntropyTokens(sub, fraction: lossConfig.entropyTokenFrac) : nil)
            return (trie(sub), sub, idx.map { batch.advantages[$0] }, terms)
        }
        var out: [UpdatePlan] = []
        for epoch in 0..<config.ppoEpochs {
            for (m, (t, sub, adv, terms)) in packed.enumerated() {
                out.append(UpdatePlan(epoch: epoch, minibatch: m, trie: t, trajectories: sub, advantages: adv,
                                      normaliser: LossNormaliser(sub),
                                      microBatches: t.shards(shards, maxTokens: config.maxTokens)[shard].filter { $0.count > 0 },
                                      loss: lossConfig, terms: terms))
            }
        }
        return out
    }

    /// This trainer's share of the current log-probs of `update`'s loss tokens, laid out
    /// by `update.tokenOffsets` (0 at every position this trainer does not carry): summed
    /// over the trainers, it holds every loss token's log-prob once. Costs one forward pass
    /// of the trainer's micro-batches.
    public func currentLogprobs(_ update: UpdatePlan) throws -> [Double] {
        let offsets = update.tokenOffsets, t = update.trie, sub = update.trajectories
        var out = [Double](repeating: 0, count: offsets.last ?? 0)
        for micro in update.microBatches {
            let lp = model.forward(try micro.packedBatch(of: t, config: model.config), temperature: config.temperature).logprobs
            for (i, row) in micro.rowMap.enumerated() where micro.carriesLoss[i] {
                for term in t.terms(of: Int(row)) where sub[Int(term.trajectory)].lossMask[Int(term.position)] == 1 {
                    out[offsets[Int(term.trajectory)] + Int(term.position)] = Double(lp[i])
                }
            }
        }
        return out
    }

    /// `update` with its KL-Cov tokens chosen from every loss token's current log-prob
    /// (`currentLogprobs` summed over the trainers), the same choice on every trainer.
    public func choosingKLCovTokens(_ update: UpdatePlan, logprobs: [Double]) -> UpdatePlan {
        let offsets = update.tokenOffsets
        let l = update.trajectories.indices.map { s in Array(logprobs[offsets[s]..<offsets[s + 1]]) }
        let a = tokenAdvantages(update.trajectories, advantages: update.advantages, config: update.loss)
        var out = update
        out.terms.klCovered = klCovTokens(update.trajectories, logprobs: l, advantages: a, fraction: update.loss.klCovFrac)
        return out
    }

    /// Forward and loss of one micro-batch; the caller runs the returned backward pass
    /// (which accumulates into `model.grads`) before the next forward.
    public func forward(_ micro: TrieShard, of update: UpdatePlan) throws -> MicroBatchPass {
        let t = update.trie, sub = update.trajectories
        // Only rows that carry a loss token here need a log-prob: the head computes their
        // parents' distributions and no other (prompt rows cost no vocabulary-wide softmax).
        let scoring = micro.rowMap.indices.map { i in
            micro.carriesLoss[i] && t.terms(of: Int(micro.rowMap[i])).contains { sub[Int($0.trajectory)].lossMask[Int($0.position)] == 1 }
        }
        let packed = try PackedBatch(tokens: micro.tokens(of: t).map(Int.init), parents: micro.parents.map(Int.init),
                                     vocabSize: model.config.vocabSize, maxPositions: model.config.nPositions, scoring: scoring)
        let ref = reference.map { $0.forward(packed, temperature: config.temperature).logprobs }
        let out = model.forward(packed, temperature: config.temperature)
        let r = policyLoss(trie: t, trajectories: sub, advantages: update.advantages, logprobs: out.logprobs, config: update.loss,
                           normaliser: update.normaliser, shard: micro, referenceLogprobs: ref, terms: update.terms)
        var tally = UpdateTally()
        tally.loss = r.loss; tally.lossTokens = Double(r.lossTokens); tally.clippedTokens = Double(r.clippedTokens)
        tally.klBehaviourSum = r.klBehaviourSum; tally.computedRows = Double(micro.count); tally.klReferenceSum = r.klReferenceSum
        if update.loss.offPolicy == .decoupled {
            tally.isWeightTokens = Double(r.lossTokens); tally.isWeightSum = r.isWeightSum
            tally.isTruncatedTokens = Double(r.isTruncatedTokens); tally.isWeightMax = r.isWeightMax
        }
        for (i, row) in micro.rowMap.enumerated() where micro.carriesLoss[i] {
            for term in t.terms(of: Int(row)) where sub[Int(term.trajectory)].lossMask[Int(term.position)] == 1 {
                tally.logprobSum += Double(out.logprobs[i])
            }
        }
        return MicroBatchPass(tally: tally, backward: model.beginBackward(dlogprobs: r.dlogprobs))
    }

    /// Forward, loss and the whole backward pass of one micro-batch.
    public func accumulate(_ micro: TrieShard, of update: UpdatePlan) throws -> UpdateTally {
        let pass = try forward(micro, of: update)
        pass.backward.finish()
        return pass.tally
    }

    /// Applies one update from gradients already summed over trainers: measures the global
    /// gradient norm (before clipping) and, when it and the loss are finite, takes the
    /// optimizer step; otherwise the update is skipped and counted in `skippedInARow`.
    public func apply(_ tally: UpdateTally, lr: Float) -> UpdateOutcome {
        let gnorm = Optimizer.globalNorm(model.grads)
        return apply(tally, lr: lr, gradient: UnsafePointer(model.grads.pointer), norm: gnorm)
    }

    /// Applies one update to the optimizer's slice of the parameters (all of them unless
    /// the optimizer state is sharded over trainers).
    /// - Parameters:
    ///   - gradient: the summed gradient of the optimizer's slice.   (optimizer.slice.count)
    ///   - norm: the global gradient norm over all parameters (before clipping).
    public func apply(_ tally: UpdateTally, lr: Float, gradient: UnsafePointer<Float>, norm: Float) -> UpdateOutcome {
        guard tally.loss.isFinite, norm.isFinite else {
            skippedInARow += 1
            return UpdateOutcome(gradNorm: Double(norm), applied: false)
        }
        optimizer.step(params: model.params, gradients: gradient, lr: lr, norm: norm)
        skippedInARow = 0
        return UpdateOutcome(gradNorm: Double(norm), applied: true)
    }

    /// A whole step in one process with no other trainer: plan, accumulate, apply.
    /// The runtime's loop runs the same pieces with its communication between them.
    public func run(_ batch: TrainingBatch, lr: Float) throws -> StepStats {
        var stats = StepStats()
        stats.lr = Double(lr)
        for var update in try plan(batch, shard: 0, of: 1) {
            if update.needsCurrentLogprobs { update = choosingKLCovTokens(update, logprobs: try currentLogprobs(update)) }
            model.zeroGrad()
            var tally = UpdateTally()
            for mb in update.microBatches { tally += try accumulate(mb, of: update) }
            stats.add(update, tally, apply(tally, lr: lr))
        }
        stats.finish()
        return stats
    }

    /// The run-time drift check: recomputes `trajs` both as a trie and flat at the current
    /// weights and returns the largest relative difference of the two losses and of the
    /// log-prob of every loss token (the loss alone cannot show drift on on-policy data,
    /// where every ratio is 1 whatever the log-probs).
    public func drift(trajectories trajs: [Trajectory], advantages: [Double]) throws -> Double {
        let norm = LossNormaliser(trajs)
        func evaluate(_ t: Trie) throws -> (Double, [[Float]]) {
            var total = 0.0
            var lps = trajs.map { [Float](repeating: 0, count: $0.tokens.count) }
            for mb in t.shards(1, maxTokens: config.maxTokens)[0] where mb.count > 0 {
                let lp = model.forward(try mb.packedBatch(of: t, config: model.config), temperature: config.temperature).logprobs
                total += policyLoss(trie: t, trajectories: trajs, advantages: advantages, logprobs: lp, config: loss,
                                    normaliser: norm, shard: mb).loss
                for (i, row) in mb.rowMap.enumerated() where mb.carriesLoss[i] {
                    for term in t.terms(of: Int(row)) { lps[Int(term.trajectory)][Int(term.position)] = lp[i] }
                }
            }
            return (total, lps)
        }
        let (a, la) = try evaluate(Trie(trajs)), (b, lb) = try evaluate(Trie.flat(sequences: trajs.map(\.tokens)))
        var worst = abs(a - b) / max(abs(b), 1e-12)
        for (s, t) in trajs.enumerated() {
            for k in 0..<t.tokens.count where t.lossMask[k] == 1 {
                worst = max(worst, Double(abs(la[s][k] - lb[s][k])) / max(1, Double(abs(lb[s][k]))))
            }
        }
        return worst
    }
}
