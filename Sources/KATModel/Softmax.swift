import CKATKernels
#if canImport(Glibc)
import Glibc
#endif

/// A running summary of softmax(z * scale) over a row of logits seen in slices (online
/// softmax, Milakov and Gimelshein 2018): the largest value M, S = sum exp(z - M) and
/// W = sum exp(z - M) (z - M), all over the scaled logits seen so far.
///
/// log-sum-exp = M + log S; entropy = -sum p log p = log S - W / S.
public struct SoftmaxSummary: Sendable {
    public var max: Float = -.infinity
    public var sum: Float = 0
    public var weighted: Float = 0
    public init() {}

    /// The summary of `count` logits at `z`, each multiplied by `scale`.
    public init(_ z: UnsafePointer<Float>, count: Int, scale: Float) {
        var st: (Float, Float, Float) = (-.infinity, 0, 0)
        withUnsafeMutablePointer(to: &st) { p in
            p.withMemoryRebound(to: Float.self, capacity: 3) { kat_softmax_summary(z, count, scale, $0) }
        }
        (max, sum, weighted) = st
    }

    /// Adds the logits summarised by `other` (taken relative to the larger maximum).
    public mutating func merge(_ other: SoftmaxSummary) {
        if other.sum == 0 { return }
        if sum == 0 { self = other; return }
        if other.max > max {
            let f = expf(max - other.max)
            weighted = f * (weighted + (max - other.max) * sum) + other.weighted
            sum = sum * f + other.sum
            max = other.max
        } else {
            let f = expf(other.max - max)
            weighted += f * (other.weighted + (other.max - max) * other.sum)
            sum += other.sum * f
        }
    }

    public var logSumExp: Float { max + logf(sum) }
    public var entropy: Float { logf(sum) - weighted / sum }
    /// The mass of `other`'s logits relative to this summary's (0...1 when `other` has been merged in).
    public func share(of other: SoftmaxSummary) -> Float { other.sum * expf(other.max - max) / sum }
}

/// Vectorised scans over a row of logits, for sampling.
public enum LogitScan {
    /// Index of the first largest of `count` logits.
    public static func argmax(_ z: UnsafePointer<Float>, count: Int) -> Int { kat_argmax(z, count) }

    /// The first index i with sum over j <= i of exp(z_j scale - logSumExp) above u, or nil
    /// when round-off leaves the total at or below u.
    public static func sampleIndex(_ z: UnsafePointer<Float>, count: Int, scale: Float, logSumExp: Float, u: Float) -> Int? {
        let i = kat_sample_index(z, count, scale, logSumExp, u)
        return i < 0 ? nil : i
    }

    /// The indices of the logits with z scale >= threshold, in order, written to `into`
    /// (which needs room for `count`); returns how many.
    public static func indices(atLeast threshold: Float, _ z: UnsafePointer<Float>, count: Int, scale: Float,
                               into: UnsafeMutablePointer<Int32>) -> Int {
        kat_indices_at_least(z, count, scale, threshold, into)
    }
}
