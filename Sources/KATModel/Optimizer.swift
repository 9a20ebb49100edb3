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
///
/// An optimizer may own a slice of the parameters only (`slice`): its moments then cover
/// that slice, which is how trainers share optimizer state (each updates its slice with
/// the summed gradient of that slice, then the slices are gathered).
public final class Optimizer: @unchecked Sendable {
    public let config: OptimizerConfig
    /// The parameters this optimizer updates (all of them unless sharded).
    public let slice: Range<Int>
    /// First and second moments (AdamW only), of the parameters of `slice`.
    public let m: FloatBuffer
    public let v: FloatBuffer
    /// Number of updates applied (Adam's bias-correction step).
    public var t: Int = 0
    /// The owned slice in runs of tensors that all take weight decay or all do not, in order,
    /// relative to `slice` (a few dozen ranges instead of a mask as large as the parameters).
    let decayRuns: [(range: Range<Int>, decays: Bool)]

    /// - Parameter slice: the parameters to own (default: all).
    public init(config: OptimizerConfig, layout: any ParameterTable, slice: Range<Int>? = nil) {
        self.config = config
        let owned = slice ?? 0..<layout.count
        self.slice = owned
        let n = config.kind == .adamw ? owned.count : 0
        m = FloatBuffer(count: n)
        v = FloatBuffer(count: n)
        var runs: [(range: Range<Int>, decays: Bool)] = []
        for t in layout.tensors.sorted(by: { $0.offset < $1.offset }) {
            let lo = max(t.offset, owned.lowerBound), hi = min(t.offset + t.count, owned.upperBound)
            guard lo < hi else { continue }
            let r = (lo - owned.lowerBound)..<(hi - owned.lowerBound)
            if let last = runs.last, last.decays == t.decays, last.range.upperBound == r.lowerBound {
                runs[runs.count - 1].range = last.range.lowerBound..<r.upperBound
            } else {
                runs.append((r, t.decays))
            }
        }
        decayRuns = runs
    }

    /// Bytes of optimizer state held (both moments).
    public var stateBytes: Int { 4 * (m.count + v.count) }

    /// L2 norm of a gradient buffer: float sums of squares over blocks of 4096, added in double.
    public static func globalNorm(_ grads: FloatBuffer) -> Float {
        Float(sumOfSquares(grads.pointer, count: grads.count).squareRoot())
    }

    /// Sum of squares of `count` floats: float sums over blocks, added in double (fast and
    /// accurate). Blocks end at multiples of 4096 of `offset + i`, so that the slices of a
    /// buffer summed apart add up to the whole buffer's sum, block for block.
    public static func sumOfSquares(_ g: UnsafePointer<Float>, count n: Int, offset: Int = 0) -> Double {
        var s: Double = 0
        var i = 0
        while i < n {
            let end = min(n, i + 4096 - (offset + i) % 4096)
            s += kat_sum_squares(g + i, end - i)
            i = end
        }
        return s
    }

    /// Applies one update with learning rate `lr`, clipping `grads` by their global norm
    /// first when `gradClip` > 0. Returns the gradient norm measured before clipping.
    @discardableResult
    public func step(params: FloatBuffer, grads: FloatBuffer, lr: Float) -> Float {
        precondition(params.count == grads.count && slice == 0..<params.count, "Optimizer.step: layout mismatch")
        let norm = Optimizer.globalNorm(grads)
        step(params: params, gradients: UnsafePointer(grads.pointer), lr: lr, norm: norm)
        return norm
    }

    /// Applies one update to the parameters of `slice`.
    /// - Parameters:
    ///   - gradients: the summed gradient of `slice` only.   (slice.count)
    ///   - norm: the global gradient norm (over all parameters), for clipping.
    public func step(params: FloatBuffer, gradients g: UnsafePointer<Float>, lr: Float, norm: Float) {
        var gscale: Float = 1
        if config.gradClip > 0, norm > config.gradClip { gscale = config.gradClip / norm }
        let base = params.pointer + slice.lowerBound
        t += 1
        let c1 = 1 - Float(pow(Double(config.beta1), Double(t)))
        let c2 = 1 - Float(pow(Double(config.beta2), Double(t)))
        for (range, decays) in decayRuns {
            let p = base + range.lowerBound, gr = g + range.lowerBound, n = range.count
            let wd = decays ? config.weightDecay : 0
            switch config.kind {
            case .sgd:
                kat_sgd(p, gr, n, lr, wd, gscale)
            case .adamw:
                kat_adamw(p, gr, m.pointer + range.lowerBound, v.pointer + range.lowerBound, n, lr, config.beta1, config.beta2,
                          config.eps, wd, c1, c2, gscale)
            }
        }
    }
}
