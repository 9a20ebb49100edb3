/// How a batch's per-token losses are normalised (token-mean PPO-clip and its
/// sequence-level variants; Dr. GRPO, arXiv 2503.20783, for the token-sum form).
public enum LossMode: String, Sendable, CaseIterable {
    /// (1/N) sum over all loss tokens, N counted over the flattened global batch.
    case tokenMean = "token-mean"
    /// (1/S) sum_s (1/n_s) sum_t.
    case seqMeanTokenMean = "seq-mean-token-mean"
    /// (1/S) sum_s sum_t (Dr. GRPO style).
    case seqMeanTokenSum = "seq-mean-token-sum"
}

/// The normaliser's counts, taken over the flattened global batch (or minibatch): all
/// trajectories of all shards and ranks, never a shard's or the trie's own count.
public struct LossNormaliser: Sendable, Equatable {
    /// Loss tokens of the flattened batch.
    public var tokens: Int
    /// Trajectories with at least one loss token.
    public var sequences: Int

    public init(tokens: Int, sequences: Int) { self.tokens = tokens; self.sequences = sequences }
    public init(_ trajectories: [Trajectory]) {
        tokens = trajectories.reduce(0) { $0 + $1.lossTokens }
        sequences = trajectories.filter { $0.lossTokens > 0 }.count
    }

    /// w_{s,t} for a trajectory with `n` loss tokens.
    @inline(__always)
    public func weight(mode: LossMode, sequenceTokens n: Int) -> Double {
        switch mode {
        case .tokenMean: return tokens > 0 ? 1 / Double(tokens) : 0
        case .seqMeanTokenMean: return sequences > 0 && n > 0 ? 1 / (Double(sequences) * Double(n)) : 0
        case .seqMeanTokenSum: return sequences > 0 ? 1 / Double(sequences) : 0
        }
    }
}

