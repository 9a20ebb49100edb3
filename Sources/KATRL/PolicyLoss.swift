import Foundation
import KATModel
import KATTrie

public struct PolicyLossConfig: Sendable, Equatable {
    public var mode: LossMode = .tokenMean
    public var epsLow: Double = 0.2
    public var epsHigh: Double = 0.2
    /// Weight of the k3 estimate of KL(pi || pi_ref) per loss token (0: off).
    public var klCoef: Double = 0
    public init(mode: LossMode = .tokenMean, epsLow: Double = 0.2, epsHigh: Double = 0.2, klCoef: Double = 0) {
        self.mode = mode; self.epsLow = epsLow; self.epsHigh = epsHigh; self.klCoef = klCoef
    }
}

/// PPO-clip of one token: value -min(r A, clip(r, 1-eps_low, 1+eps_high) A), its derivative
/// with respect to the current log-prob l (r = exp(l - b)), and whether the clip is active.
@inline(__always)
public func ppoClipTerm(l: Double, b: Double, advantage a: Double, epsLow: Double, epsHigh: Double)
    -> (loss: Double, dl: Double, clipped: Bool) {
    let r = exp(l - b)
    let unclipped = r * a
    let clipped = min(max(r, 1 - epsLow), 1 + epsHigh) * a
    if unclipped <= clipped { return (-unclipped, -unclipped, false) }
    // The clipped branch is the minimum only when r is outside the range: constant in l.
    return (-clipped, 0, true)
}

/// Result of the policy loss on one packed batch.
public struct PolicyLossResult: Sendable {
    /// This batch's share of L (sum over its terms of w * loss).
    public var loss: Double
    /// dL/dl per row, the sum of the terms of every trajectory through it.
    public var dlogprobs: [Float]
    public var lossTokens: Int
    public var clippedTokens: Int
    /// Sum over loss tokens of the k3 estimate of KL(behaviour || current).
    public var klBehaviourSum: Double
    /// Sum over loss tokens of the k3 estimate of KL(current || reference), when given.
    public var klReferenceSum: Double = 0
}

/// The policy loss on a trie (PPO-clip, arXiv 1707.06347; Docs/rl.md): each row's derivative is the
/// sum of its trajectories' terms, each with its own mask, behaviour log-prob and
/// advantage; the log-prob of a row comes from its parent's output.
/// - Parameters:
///   - logprobs: current log-probs per row (from the model's `forward`).
///   - advantages: A_s per trajectory (after any scaling).
///   - shard: when given, `logprobs` are the shard's rows; rows that do not carry the
///     loss (a prefix repeated in another shard) contribute nothing.
///   - referenceLogprobs: per row, the reference (initial) model's log-probs; with
///     `config.klCoef` > 0 each loss token adds klCoef * w * k3, k3 = e^(r-l) - 1 - (r-l).
public func policyLoss(trie: Trie, trajectories: [Trajectory], advantages: [Double], logprobs: [Float],
                       config: PolicyLossConfig, normaliser: LossNormaliser, shard: TrieShard? = nil,
                       referenceLogprobs: [Float]? = nil) -> PolicyLossResult {
    let rows = shard?.count ?? trie.count
    precondition(logprobs.count == rows && advantages.count == trajectories.count, "policyLoss: sizes differ")
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
            // Missing behaviour log-probs mean on-policy: b is the current value, ratio 1.
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

extension TrieShard {
    /// The shard as the model's packed batch.
    public func packedBatch(of trie: Trie, config: any ModelConfiguration) throws(ModelError) -> PackedBatch {
        try PackedBatch(tokens: tokens(of: trie).map(Int.init), parents: parents.map(Int.init), vocabSize: config.vocabSize,
                        maxPositions: config.nPositions)
    }
}

extension Trie {
    /// The trie as the model's packed batch.
    public func packedBatch(config: any ModelConfiguration) throws(ModelError) -> PackedBatch {
        try PackedBatch(tokens: tokens.map(Int.init), parents: parents.map(Int.init), vocabSize: config.vocabSize,
                        maxPositions: config.nPositions)
    }
}
