import Foundation
import KATSupport
import KATTrie

/// Advantage estimation (GRPO, arXiv 2402.03300; RLOO, arXiv 2402.14740) and entropy-aware
/// scaling (Docs/rl.md).
public struct AdvantageConfig: Sendable, Equatable {
    public enum Estimator: String, Sendable, CaseIterable { case grpo, rloo, given }
    public enum Scope: String, Sendable { case group, batch }
    public var estimator: Estimator = .grpo
    public var normalizeStd = true
    public var entropyScaling = true
    public var alpha = 1.0
    public var scaleMin = 0.5
    public var scaleMax = 2.0
    public var scope: Scope = .group
    public init(estimator: Estimator = .grpo, normalizeStd: Bool = true, entropyScaling: Bool = true, alpha: Double = 1,
                scaleMin: Double = 0.5, scaleMax: Double = 2, scope: Scope = .group) {
        self.estimator = estimator; self.normalizeStd = normalizeStd; self.entropyScaling = entropyScaling
        self.alpha = alpha; self.scaleMin = scaleMin; self.scaleMax = scaleMax; self.scope = scope
    }
}

/// A trajectory that lacks what the estimator needs; names where it came from (file and
/// line, or rollout) and the field.
public enum AdvantageError: Error, CustomStringConvertible, Equatable {
    /// `field` is missing although `setting` needs it.
    case missingField(source: String, field: String, setting: String)
    /// RLOO needs at least two trajectories in a group.
    case loneTrajectory(source: String)

    public var description: String {
        switch self {
        case let .missingField(source, field, setting): return "\(source): field \(field): missing (\(setting))"
        case let .loneTrajectory(source): return "\(source): field group: RLOO needs at least two trajectories per group; this one is alone"
        }
    }
}

/// Entropy-aware scale of each trajectory: clip((H_s / mean H)^alpha, min, max), the mean
/// over the trajectory's group (or the whole batch); a mean of 0 gives scale 1.
public func entropyScales(entropies: [Double], groups: [String], config: AdvantageConfig) -> [Double] {
    var sum: [String: Double] = [:], count: [String: Int] = [:]
    for (h, g) in zip(entropies, groups) {
        let key = config.scope == .batch ? "" : g
        sum[key, default: 0] += h
        count[key, default: 0] += 1
    }
    return zip(entropies, groups).map { h, g in
        let key = config.scope == .batch ? "" : g
        let mean = (sum[key] ?? 0) / Double(max(1, count[key] ?? 1))
        if mean <= 0 { return 1 }
        let raw = Foundation.pow(h / mean, config.alpha)
        return min(max(raw, config.scaleMin), config.scaleMax)
    }
}

/// A_s for every trajectory: GRPO, RLOO or given, then entropy scaling when on (for
/// advantages computed from rewards only). The sign of an advantage never changes.
public func computeAdvantages(_ trajectories: [Trajectory], config: AdvantageConfig) throws(AdvantageError) -> [Double] {
    let groups = groupKeys(trajectories)
    var adv = [Double](repeating: 0, count: trajectories.count)
    switch config.estimator {
    case .given:
        for (s, t) in trajectories.enumerated() {
            guard let a = t.advantage else { throw .missingField(source: t.source, field: "advantage", setting: "advantage.estimator is given") }
            adv[s] = a
        }
        return adv
    case .grpo, .rloo:
        var members: [String: [Int]] = [:]
        for (s, t) in trajectories.enumerated() {
            guard t.reward != nil else {
                throw .missingField(source: t.source, field: "reward", setting: "advantage.estimator is \(config.estimator.rawValue)")
            }
            members[groups[s], default: []].append(s)
        }
        for (_, idx) in members {
            let rewards = idx.map { trajectories[$0].reward ?? 0 }
            let n = Double(rewards.count)
            let mean = rewards.reduce(0, +) / n
            if config.estimator == .rloo {
                guard idx.count > 1 else {
                    let t = trajectories[idx[0]]
                    throw .loneTrajectory(source: t.source)
                }
                let total = rewards.reduce(0, +)
                for (k, s) in idx.enumerated() { adv[s] = rewards[k] - (total - rewards[k]) / (n - 1) }
            } else {
                let std = (rewards.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / n).squareRoot()
                for (k, s) in idx.enumerated() {
                    adv[s] = config.normalizeStd ? (rewards[k] - mean) / (std + 1e-6) : rewards[k] - mean
                }
            }
        }
    }
    if config.entropyScaling {
        var h: [Double] = []
        for t in trajectories {
            guard let e = t.entropy else {
                throw .missingField(source: t.source, field: "entropy", setting: "advantage.entropy_scaling is on")
            }
            h.append(e)
        }
        let scales = entropyScales(entropies: h, groups: groups, config: config)
        for s in adv.indices { adv[s] *= scales[s] }
    }
    return adv
}

/// The entropy bonus of one token (Cheng et al., "Reasoning with Exploration: An Entropy
/// Perspective", arXiv 2506.14758): A_{s,t} = A_s + min(beta H_{s,t}, |A_s| / kappa), with
/// H_{s,t} the behaviour entropy of the token (nats), a constant of the loss. The bonus is
/// never negative and never more than |A_s| / kappa, so for kappa > 1 it never flips the
/// sign of a negative advantage, and a token of a zero-advantage trajectory gets none.
@inline(__always)
public func entropyBonusAdvantage(_ a: Double, entropy h: Double, beta: Double, kappa: Double) -> Double {
    a + min(beta * h, abs(a) / kappa)
}
