import CKATKernels
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
    /// The buffer in runs of tensors that all take weight decay or all do not, in order
    /// (a few dozen ranges instead of a mask as large as the parameters).
    let decayRuns: [(range: Range<Int>, decays: Bool)]
    let parameterCount: Int

    public init(config: OptimizerConfig, layout: any ParameterTable) {
        self.config = config
        let n = config.kind == .adamw ? layout.count : 0
        m = FloatBuffer(count: n)
        v = FloatBuffer(count: n)
        parameterCount = layout.count
        var runs: [(range: Range<Int>, decays: Bool)] = []
        for t in layout.tensors.sorted(by: { $0.offset < $1.offset }) {
            let r = t.offset..<(t.offset + t.count)
            if let last = runs.last, last.decays == t.decays, last.range.upperBound == r.lowerBound {
                runs[runs.count - 1].range = last.range.lowerBound..<r.upperBound
            } else {
                runs.append((r, t.decays))
            }
        }
        decayRuns = runs
    }

    /// L2 norm of a gradient buffer: float sums of squares over blocks of 4096, added in double.
    public static func globalNorm(_ grads: FloatBuffer) -> Float {
        Float(kat_sum_squares(grads.pointer, grads.count).squareRoot())
    }

    /// Applies one update with learning rate `lr`, clipping `grads` in place first when
    /// `gradClip` > 0. Returns the gradient norm measured before clipping.
    @discardableResult
    public func step(params: FloatBuffer, grads: FloatBuffer, lr: Float) -> Float {
        precondition(params.count == grads.count && params.count == parameterCount, "Optimizer.step: layout mismatch")
        let norm = Optimizer.globalNorm(grads)
        var gscale: Float = 1
        if config.gradClip > 0, norm > config.gradClip { gscale = config.gradClip / norm }
        t += 1
        let c1 = 1 - Float(pow(Double(config.beta1), Double(t)))
        let c2 = 1 - Float(pow(Double(config.beta2), Double(t)))
        for (range, decays) in decayRuns {
            let p = params.pointer + range.lowerBound, g = grads.pointer + range.lowerBound, n = range.count
            let wd = decays ? config.weightDecay : 0
            switch config.kind {
            case .sgd:
                kat_sgd(p, g, n, lr, wd, gscale)
            case .adamw:
                kat_adamw(p, g, m.pointer + range.lowerBound, v.pointer + range.lowerBound, n, lr, config.beta1, config.beta2,
                          config.eps, wd, c1, c2, gscale)
            }
        }
        return norm
    }
}
