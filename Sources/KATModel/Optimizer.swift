#if canImport(Glibc)
import Glibc
#endif

/// Optimizer settings, with kat-dist's defaults (AdamW: Loshchilov and Hutter, arXiv 1711.05101).
public struct OptimizerConfig: Equatable, Sendable {
    public enum Kind: String, Sendable, CaseIterable { case adamw, sgd }
    public enum Schedule: String, Sendable, CaseIterable { case constant, cosine }
    public var kind: Kind = .adamw
    public var lr: Float = 3e-4
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var eps: Float = 1e-8
    public var weightDecay: Float = 0
    /// Global-norm clipping threshold; 0 turns clipping off.
    public var gradClip: Float = 1.0
    public var schedule: Schedule = .cosine
    public var warmupSteps: Int = 0
    public init() {}

    /// Learning rate at optimizer step `step` (0-based) of `totalSteps`: linear warm-up to
    /// `lr` over `warmupSteps`, then constant, or cosine down to 10% of `lr` at the end.
    public func learningRate(step: Int, totalSteps: Int) -> Float {
        if step < warmupSteps { return lr * Float(step + 1) / Float(warmupSteps) }
        guard schedule == .cosine else { return lr }
        let decaySteps = max(1, totalSteps - warmupSteps)
        let progress = min(1, Float(step - warmupSteps) / Float(decaySteps))
        let minLR = 0.1 * lr
        return minLR + 0.5 * (lr - minLR) * (1 + cos(Float.pi * progress))
    }
}

/// AdamW or SGD over the model's flat parameter buffer, with moments in the same layout.
public final class Optimizer: @unchecked Sendable {
    public let config: OptimizerConfig
    /// First and second moments (AdamW only), laid out as the parameters.
    public let m: FloatBuffer
    public let v: FloatBuffer
    /// Number of updates applied (Adam's bias-correction step).
    public var t: Int = 0
    /// 1 where weight decay applies, 0 elsewhere.
    let decayMask: FloatBuffer

    public init(config: OptimizerConfig, layout: any ParameterTable) {
        self.config = config
        let n = config.kind == .adamw ? layout.count : 0
        m = FloatBuffer(count: n)
        v = FloatBuffer(count: n)
        decayMask = FloatBuffer(count: layout.count)
        for t in layout.tensors where t.decays {
            (decayMask.pointer + t.offset).update(repeating: 1, count: t.count)
        }
    }

    /// L2 norm of a gradient buffer, accumulated in double.
    public static func globalNorm(_ grads: FloatBuffer) -> Float {
        var s: Double = 0
        let g = grads.pointer
        var i = 0
        let n = grads.count
        // Float sums over blocks of 4096, added in double: fast and accurate.
        while i < n {
            let end = min(n, i + 4096)
            var block: Float = 0
            for j in i..<end { block += g[j] * g[j] }
            s += Double(block)
            i = end
        }
        return Float(s.squareRoot())
    }

    /// Applies one update with learning rate `lr`, clipping `grads` in place first when
    /// `gradClip` > 0. Returns the gradient norm measured before clipping.
    @discardableResult
    public func step(params: FloatBuffer, grads: FloatBuffer, lr: Float) -> Float {
        precondition(params.count == grads.count && params.count == decayMask.count, "Optimizer.step: layout mismatch")
        let norm = Optimizer.globalNorm(grads)
        var gscale: Float = 1
        if config.gradClip > 0, norm > config.gradClip { gscale = config.gradClip / norm }
        let p = params.pointer, g = grads.pointer, dm = decayMask.pointer, n = params.count
        let wd = config.weightDecay
        t += 1
        switch config.kind {
        case .sgd:
            for i in 0..<n {
                p[i] -= lr * (gscale * g[i] + wd * dm[i] * p[i])
            }
        case .adamw:
            let b1 = config.beta1, b2 = config.beta2, eps = config.eps
            let c1 = 1 - Float(pow(Double(b1), Double(t)))
            let c2 = 1 - Float(pow(Double(b2), Double(t)))
            let mp = m.pointer, vp = v.pointer
            for i in 0..<n {
                let gi = gscale * g[i]
                let mi = b1 * mp[i] + (1 - b1) * gi
                let vi = b2 * vp[i] + (1 - b2) * gi * gi
                mp[i] = mi
                vp[i] = vi
                let mh = mi / c1, vh = vi / c2
                p[i] -= lr * (mh / (vh.squareRoot() + eps) + wd * dm[i] * p[i])
            }
        }
        return norm
    }
}
