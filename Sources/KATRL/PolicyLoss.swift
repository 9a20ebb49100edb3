import Foundation
import KATModel
import KATTrie

/// Settings of the policy loss (the `loss.*` keys, and the per-token entropy bonus of
/// `advantage.entropy_bonus_*`, which the loss applies token by token). Every variant is
/// off by default, and with all of them off the loss is token-mean PPO-clip as before.
public struct PolicyLossConfig: Sendable, Equatable {
    /// How the ratio treats data sampled by older weights (`loss.off_policy`).
    public enum OffPolicy: String, Sendable, CaseIterable {
        /// PPO-clip against the behaviour policy: r = exp(l - b).
        case ppo
        /// Decoupled PPO (Hilton et al., arXiv 2110.00641; AReaL, arXiv 2505.24298): PPO-clip
        /// against the proximal policy (the weights at the step's start), r = exp(l - p),
        /// times the importance weight w = exp(p - b), truncated at `isCap`.
        case decoupled
    }
    public var mode: LossMode = .tokenMean
    public var epsLow: Double = 0.2
    /// Clip-higher (DAPO, arXiv 2503.14476) is `epsHigh` above `epsLow`.
    public var epsHigh: Double = 0.2
    /// Weight of the k3 estimate of KL(pi || pi_ref) per loss token (0: off).
    public var klCoef: Double = 0
    public var offPolicy: OffPolicy = .ppo
    /// Truncation of the decoupled importance weight, w = min(w, isCap); 0: none.
    public var isCap: Double = 0
    /// Entropy bonus (arXiv 2506.14758): A_{s,t} = A_s + min(beta H_{s,t}, |A_s| / kappa); beta 0 is off.
    public var entropyBonusBeta: Double = 0
    public var entropyBonusKappa: Double = 2
    /// High-entropy tokens only (arXiv 2506.01939): the share rho of a (mini)batch's loss
    /// tokens, those of highest behaviour entropy, that contribute; 1 is off (all do).
    public var entropyTokenFrac: Double = 1
    /// KL-Cov (arXiv 2505.22617): the share of a (mini)batch's loss tokens, those of largest
    /// covariance of log-prob and advantage, that get `klCovCoef` (l - b)^2 / 2; 0 is off.
    public var klCovFrac: Double = 0
    public var klCovCoef: Double = 1

    public init(mode: LossMode = .tokenMean, epsLow: Double = 0.2, epsHigh: Double = 0.2, klCoef: Double = 0,
                offPolicy: OffPolicy = .ppo, isCap: Double = 0, entropyBonusBeta: Double = 0, entropyBonusKappa: Double = 2,
                entropyTokenFrac: Double = 1, klCovFrac: Double = 0, klCovCoef: Double = 1) {
        self.mode = mode; self.epsLow = epsLow; self.epsHigh = epsHigh; self.klCoef = klCoef
        self.offPolicy = offPolicy; self.isCap = isCap
        self.entropyBonusBeta = entropyBonusBeta; self.entropyBonusKappa = entropyBonusKappa
        self.entropyTokenFrac = entropyTokenFrac; self.klCovFrac = klCovFrac; self.klCovCoef = klCovCoef
    }

    public var usesEntropyBonus: Bool { entropyBonusBeta > 0 }
    public var selectsHighEntropyTokens: Bool { entropyTokenFrac < 1 }
    public var usesKLCov: Bool { klCovFrac > 0 && klCovCoef > 0 }
    /// Whether the loss reads each token's behaviour entropy (`entropies`).
    public var needsTokenEntropies: Bool { usesEntropyBonus || selectsHighEntropyTokens }
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

/// What the loss needs per (trajectory, position) besides the trajectories themselves,
/// fixed before an update's forward pass. Indexed `[s][t]` like the trajectories' tokens.
public struct TokenTerms: Sendable {
    /// Decoupled loss: p, the log-prob under the weights at the step's start, where the
    /// mask is 1. nil: p is the current log-prob (the step has one update, whose forward
    /// pass runs at the step's start weights).
    public var proximal: [[Float]]?
    /// High-entropy tokens only: whether each loss token contributes. nil: all do.
    public var contributes: [[Bool]]?
    /// KL-Cov: whether each loss token carries the penalty. nil: none.
    public var klCovered: [[Bool]]?
    public init(proximal: [[Float]]? = nil, contributes: [[Bool]]? = nil, klCovered: [[Bool]]? = nil) {
        self.proximal = proximal; self.contributes = contributes; self.klCovered = klCovered
    }
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
    /// Decoupled loss: sum and largest of the importance weights w (after truncation) over
    /// loss tokens, and how many were truncated.
    public var isWeightSum: Double = 0
    public var isWeightMax: Double = 0
    public var isTruncatedTokens: Int = 0
}

/// The policy loss on a trie (PPO-clip, arXiv 1707.06347; Docs/rl.md): each row's derivative
/// is the sum of its trajectories' terms, each with its own mask, behaviour log-prob,
/// proximal log-prob, advantage and per-token selections; the log-prob of a row comes from
/// its parent's output.
///
/// For trajectory s and loss token t, with current log-prob l, behaviour log-prob b
/// (missing: on-policy, b = l, or b = p for the decoupled loss), token advantage
/// A = A_s (+ min(beta H_{s,t}, |A_s| / kappa) with the entropy bonus), and normaliser weight n_s:
///
///     ppo:        loss = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A),  r = exp(l - b)
///     decoupled:  loss = -w min(r A, clip(r) A),  r = exp(l - p),  w = min(exp(p - b), cap) constant
///     KL-Cov:     + klCovCoef (l - b)^2 / 2 on the chosen tokens
///     KL to ref:  + klCoef k3(l_ref - l)
///     high-entropy tokens only: tokens not chosen contribute 0 (still counted by n_s)
///     L = sum of n_s * loss over the terms
///
/// - Parameters:
///   - logprobs: current log-probs per row (from the model's `forward`).
///   - advantages: A_s per trajectory (after any scaling).
///   - shard: when given, `logprobs` are the shard's rows; rows that do not carry the
///     loss (a prefix repeated in another shard) contribute nothing.
///   - referenceLogprobs: per row, the reference (initial) model's log-probs; with
///     `config.klCoef` > 0 each loss token adds klCoef * w * k3, k3 = e^(r-l) - 1 - (r-l).
///   - terms: proximal log-probs and per-token selections (see `TokenTerms`).
public func policyLoss(trie: Trie, trajectories: [Trajectory], advantages: [Double], logprobs: [Float],
                       config: PolicyLossConfig, normaliser: LossNormaliser, shard: TrieShard? = nil,
                       referenceLogprobs: [Float]? = nil, terms tokenTerms: TokenTerms = TokenTerms()) -> PolicyLossResult {
    let rows = shard?.count ?? trie.count
    precondition(logprobs.count == rows && advantages.count == trajectories.count, "policyLoss: sizes differ")
    var d = [Float](repeating: 0, count: rows)
    var loss = 0.0, tokens = 0, clippedCount = 0, kl = 0.0, klRef = 0.0
    var isSum = 0.0, isMax = 0.0, truncated = 0
    let weights = trajectories.map { normaliser.weight(mode: config.mode, sequenceTokens: $0.lossTokens) }
    let decoupled = config.offPolicy == .decoupled, bonus = config.usesEntropyBonus
    for u in 0..<rows {
        if let shard, !shard.carriesLoss[u] { continue }
        let l = Double(logprobs[u])
        var du = 0.0
        for term in trie.terms(of: shard.map { Int($0.rowMap[u]) } ?? u) {
            let s = Int(term.trajectory), t = Int(term.position)
            let traj = trajectories[s]
            guard traj.lossMask[t] == 1 else { continue }
            var a = advantages[s]
            if bonus {
                a = entropyBonusAdvantage(a, entropy: traj.entropies.map { Double($0[t]) } ?? 0,
                                          beta: config.entropyBonusBeta, kappa: config.entropyBonusKappa)
            }
            let b: Double
            let clip: (loss: Double, dl: Double, clipped: Bool)
            if decoupled {
                let p = tokenTerms.proximal.map { Double($0[s][t]) } ?? l
                // Missing behaviour log-probs mean on-policy: b = p, weight 1.
                b = traj.logprobs.map { Double($0[t]) } ?? p
                var iw = exp(p - b)
                if config.isCap > 0, iw > config.isCap { iw = config.isCap; truncated += 1 }
                isSum += iw
                isMax = max(isMax, iw)
                let c = ppoClipTerm(l: l, b: p, advantage: a, epsLow: config.epsLow, epsHigh: config.epsHigh)
                clip = (iw * c.loss, iw * c.dl, c.clipped)
            } else {
                // Missing behaviour log-probs mean on-policy: b is the current value, ratio 1.
                b = traj.logprobs.map { Double($0[t]) } ?? l
                clip = ppoClipTerm(l: l, b: b, advantage: a, epsLow: config.epsLow, epsHigh: config.epsHigh)
            }
            tokens += 1
            let logRatio = l - b
            kl += exp(logRatio) - 1 - logRatio
            // High-entropy tokens only: the others count in the normaliser and add nothing.
            if let c = tokenTerms.contributes, !c[s][t] { continue }
            let w = weights[s]
            loss += w * clip.loss
            du += w * clip.dl
            if clip.clipped { clippedCount += 1 }
            if let k = tokenTerms.klCovered, k[s][t] {
                loss += w * config.klCovCoef * logRatio * logRatio / 2
                du += w * config.klCovCoef * logRatio
            }
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
                            klReferenceSum: klRef, isWeightSum: isSum, isWeightMax: isMax, isTruncatedTokens: truncated)
}

// MARK: - Per-token selections over a (mini)batch

/// The loss tokens of `trajectories` in flattened order (trajectory, then position): the
/// order every selection breaks ties by, the same on every trainer and for trie or flat.
public func lossTokenPositions(_ trajectories: [Trajectory]) -> [(s: Int, t: Int)] {
    var out: [(s: Int, t: Int)] = []
    for (s, traj) in trajectories.enumerated() {
        for t in 0..<traj.tokens.count where traj.lossMask[t] == 1 { out.append((s, t)) }
    }
    return out
}

/// Chooses the k = ceil(fraction * N) of the N loss tokens with the largest scores (ties:
/// the earlier token in flattened order; a NaN score ranks last).
/// - Returns: per trajectory and position, whether the token is chosen.
public func topLossTokens(_ trajectories: [Trajectory], fraction: Double, score: (Int, Int) -> Double) -> [[Bool]] {
    let positions = lossTokenPositions(trajectories)
    var chosen = trajectories.map { [Bool](repeating: false, count: $0.tokens.count) }
    // A tolerance so that 0.2 * 10 chooses 2 tokens, not 3 from the float product's round-off.
    let k = min(positions.count, Int((fraction * Double(positions.count) - 1e-9).rounded(.up)))
    guard k > 0 else { return chosen }
    let scores = positions.map { p -> Double in let v = score(p.s, p.t); return v.isNaN ? -.infinity : v }
    let order = positions.indices.sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 < $1 }
    for i in order.prefix(k) { chosen[positions[i].s][positions[i].t] = true }
    return chosen
}

/// High-entropy tokens only (Wang et al., arXiv 2506.01939): the top `fraction` of the
/// (mini)batch's loss tokens by behaviour entropy H_{s,t} (`entropies`).
public func highEntropyTokens(_ trajectories: [Trajectory], fraction: Double) -> [[Bool]] {
    topLossTokens(trajectories, fraction: fraction) { s, t in trajectories[s].entropies.map { Double($0[t]) } ?? .nan }
}

/// KL-Cov (Cui et al., arXiv 2505.22617): the top `fraction` of the (mini)batch's loss
/// tokens by Cov_{s,t} = (l_{s,t} - mean l)(A_{s,t} - mean A), the means over its loss tokens.
/// - Parameters:
///   - logprobs: current log-probs, `logprobs[s][t]` for every loss token.
///   - advantages: the token advantages A_{s,t} (A_s plus any entropy bonus).
public func klCovTokens(_ trajectories: [Trajectory], logprobs: [[Double]], advantages: [[Double]], fraction: Double) -> [[Bool]] {
    let positions = lossTokenPositions(trajectories)
    let n = Double(max(1, positions.count))
    let meanL = positions.reduce(0.0) { $0 + logprobs[$1.s][$1.t] } / n
    let meanA = positions.reduce(0.0) { $0 + advantages[$1.s][$1.t] } / n
    return topLossTokens(trajectories, fraction: fraction) { s, t in (logprobs[s][t] - meanL) * (advantages[s][t] - meanA) }
}

/// A_{s,t} of every loss token: A_s, plus the entropy bonus when it is on.
public func tokenAdvantages(_ trajectories: [Trajectory], advantages: [Double], config: PolicyLossConfig) -> [[Double]] {
    trajectories.enumerated().map { s, traj in
        (0..<traj.tokens.count).map { t in
            guard config.usesEntropyBonus, traj.lossMask[t] == 1 else { return advantages[s] }
            return entropyBonusAdvantage(advantages[s], entropy: traj.entropies.map { Double($0[t]) } ?? 0,
                                         beta: config.entropyBonusBeta, kappa: config.entropyBonusKappa)
        }
    }
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
