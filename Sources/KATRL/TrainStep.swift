import Foundation
import KATModel
import KATTrie

#if canImport(Glibc)
import Glibc
#endif

/// Seconds on a monotonic clock.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// How this process takes part in a step: which of `count` trainer shards it computes,
/// and how gradients and statistics are summed over trainers (identity in one process).
public struct TrainerRole {
    public var index: Int
    public var count: Int
    /// Sums a gradient buffer over trainers, in place.
    public var reduceGradients: (FloatBuffer) throws -> Void
    /// Sums a few doubles over trainers, in place.
    public var reduceStats: (inout [Double]) throws -> Void
    /// Called between micro-batches, so that a rank that also serves messages (trainer 0
    /// receiving rollouts) keeps them moving during a long step.
    public var poll: () throws -> Void = {}

    public static var single: TrainerRole { TrainerRole(index: 0, count: 1, reduceGradients: { _ in }, reduceStats: { _ in }) }

    public init(index: Int, count: Int, reduceGradients: @escaping (FloatBuffer) throws -> Void,
                reduceStats: @escaping (inout [Double]) throws -> Void) {
        self.index = index; self.count = count; self.reduceGradients = reduceGradients; self.reduceStats = reduceStats
    }
}

/// Everything a training step reports (SPEC section 8, the step's own part).
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
    public var updates = 0
    public var skipped = false
    public var tForwardBackward = 0.0
    public var tAllreduce = 0.0
    public var tOptimizer = 0.0
}

/// One training step on a batch of trajectories: minibatches of whole groups, each
/// packed into a trie (or flat), split into this trainer's shard and micro-batches,
/// forward, corrected loss, backward, gradient sum over trainers, optimizer update;
/// repeated for `ppo_epochs`.
public final class TrainStep {
    public let model: GPT2
    public let optimizer: Optimizer
    public let loss: PolicyLossConfig
    public let packing: String
    public let maxTokens: Int
    public let temperature: Float
    public let minibatchCount: Int
    public let ppoEpochs: Int
    public let role: TrainerRole
    /// Consecutive skipped updates (non-finite loss or gradient).
    public private(set) var skippedInARow = 0
    /// The initial model, held only when loss.kl_coef > 0.
    let reference: GPT2?
    /// Fault injection for tests: SIGKILL this process after the next step's first backward.
    public var killMidStep = false
    /// Fault injection for tests: make the next step's gradient NaN.
    public var poisonGradient = false

    public init(model: GPT2, optimizer: Optimizer, loss: PolicyLossConfig, packing: String, maxTokens: Int,
                temperature: Float, minibatches: Int, ppoEpochs: Int, role: TrainerRole = .single) {
        self.model = model; self.optimizer = optimizer; self.loss = loss; self.packing = packing
        self.maxTokens = maxTokens; self.temperature = temperature; self.minibatchCount = minibatches
        self.ppoEpochs = ppoEpochs; self.role = role
        if loss.klCoef > 0, let copy = try? GPT2(config: model.config) {
            copy.params.copy(from: model.params)
            reference = copy
        } else {
            reference = nil
        }
    }

    func trie(_ trajs: [Trajectory]) -> Trie {
        packing == "flat" ? Trie.flat(sequences: trajs.map(\.tokens)) : Trie(trajs)
    }

    /// Current log-probs for every loss token of `trajs` that has no behaviour log-prob,
    /// computed before any update of this step (PPO's "old" policy).
    func fillOnPolicyLogprobs(_ trajs: inout [Trajectory]) throws {
        let missing = trajs.indices.filter { trajs[$0].logprobs == nil }
        guard !missing.isEmpty else { return }
        let sub = missing.map { trajs[$0] }
        let t = trie(sub)
        for shard in t.shards(1, maxTokens: maxTokens)[0] where shard.count > 0 {
            let lp = model.forward(try shard.packedBatch(of: t, config: model.config), temperature: temperature).logprobs
            for (i, row) in shard.rowMap.enumerated() {
                for term in t.terms(of: Int(row)) {
                    let s = missing[Int(term.trajectory)]
                    if trajs[s].logprobs == nil { trajs[s].logprobs = [Float](repeating: .nan, count: trajs[s].tokens.count) }
                    if trajs[s].lossMask[Int(term.position)] == 1 { trajs[s].logprobs![Int(term.position)] = lp[i] }
                }
            }
        }
    }

    /// Runs the step. `groups` are trajectory indices of whole groups; `advantages` per
    /// trajectory; `step`/`totalSteps` place the learning rate on its schedule.
    public func run(trajectories input: [Trajectory], groups: [[Int]], advantages: [Double],
                    step: Int, totalSteps: Int, lrOverride: Float? = nil) throws -> StepStats {
        var stats = StepStats()
        var trajs = input
        let parts = minibatches(groups, minibatchCount)
        if ppoEpochs > 1 || parts.count > 1 {
            let t0 = monotonicSeconds()
            try fillOnPolicyLogprobs(&trajs)
            stats.tForwardBackward += monotonicSeconds() - t0
        }
        let lr = lrOverride ?? optimizer.config.learningRate(step: step, totalSteps: totalSteps)
        stats.lr = Double(lr)
        var lossSum = 0.0, normSum = 0.0, tokens = 0.0, clipped = 0.0, kl = 0.0, lpSum = 0.0, lpCount = 0.0
        var anySkipped = false
        var klRef = 0.0
        let tries = parts.map { idx in trie(idx.map { trajs[$0] }) }
        for epoch in 0..<ppoEpochs {
            for (m, idx) in parts.enumerated() {
                let sub = idx.map { trajs[$0] }
                let adv = idx.map { advantages[$0] }
                let t = tries[m]
                let norm = LossNormaliser(sub)
                let shards = t.shards(role.count, maxTokens: maxTokens)
                let t0 = monotonicSeconds()
                model.zeroGrad()
                var local = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] // loss, tokens, clipped, kl, logprob sum, computed rows, kl to reference
                for mb in shards[role.index] where mb.count > 0 {
                    try role.poll()
                    let packed = try mb.packedBatch(of: t, config: model.config)
                    let ref = reference.map { $0.forward(packed, temperature: temperature).logprobs }
                    let out = model.forward(packed, temperature: temperature)
                    let r = policyLoss(trie: t, trajectories: sub, advantages: adv, logprobs: out.logprobs, config: loss,
                                       normaliser: norm, shard: mb, referenceLogprobs: ref)
                    model.backward(dlogprobs: r.dlogprobs)
                    if killMidStep { kill(getpid(), SIGKILL) }
                    local[0] += r.loss; local[1] += Double(r.lossTokens); local[2] += Double(r.clippedTokens)
                    local[3] += r.klBehaviourSum; local[5] += Double(mb.count); local[6] += r.klReferenceSum
                    for (i, row) in mb.rowMap.enumerated() where mb.carriesLoss[i] {
                        for term in t.terms(of: Int(row)) where sub[Int(term.trajectory)].lossMask[Int(term.position)] == 1 {
                            local[4] += Double(out.logprobs[i])
                        }
                    }
                }
                stats.tForwardBackward += monotonicSeconds() - t0
                let t1 = monotonicSeconds()
                if poisonGradient { model.grads[0] = .nan }
                try role.reduceGradients(model.grads)
                try role.reduceStats(&local)
                stats.tAllreduce += monotonicSeconds() - t1
                let t2 = monotonicSeconds()
                let gnorm = Optimizer.globalNorm(model.grads)
                if !local[0].isFinite || !gnorm.isFinite {
                    anySkipped = true
                    skippedInARow += 1
                } else {
                    optimizer.step(params: model.params, grads: model.grads, lr: lr)
                    skippedInARow = 0
                    stats.updates += 1
                }
                stats.tOptimizer += monotonicSeconds() - t2
                lossSum += local[0]; normSum += Double(gnorm)
                tokens += local[1]; clipped += local[2]; kl += local[3]; klRef += local[6]
                if epoch == 0 {
                    lpSum += local[4]; lpCount += local[1]
                    stats.tokensComputed += Int(local[5])
                    stats.tokensTrie += t.count
                    stats.tokensFlat += t.flatTokens
                }
            }
        }
        let n = Double(parts.count * ppoEpochs)
        stats.loss = lossSum / n
        stats.gradNorm = normSum / n
        stats.clipFrac = tokens > 0 ? clipped / tokens : 0
        stats.klBehaviour = tokens > 0 ? kl / tokens : 0
        stats.klReference = tokens > 0 ? klRef / tokens : 0
        stats.logprobMean = lpCount > 0 ? lpSum / lpCount : 0
        stats.skipped = anySkipped
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
            for mb in t.shards(1, maxTokens: maxTokens)[0] where mb.count > 0 {
                let lp = model.forward(try mb.packedBatch(of: t, config: model.config), temperature: temperature).logprobs
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
