import CKATKernels

/// The instruction set of kat-dist's element-wise kernels (the CKATKernels target, compiled
/// for each). It is chosen once at start-up: the best the CPU runs, capped by the
/// environment variable `KAT_SIMD` (generic, avx2 or avx512) and by an `OPENBLAS_CORETYPE`
/// that names an older core (Haswell and Zen run avx2), so one variable sets both kernels.
public enum InstructionSet: Int32, CaseIterable, Sendable {
    case generic = 0
    case avx2 = 1
    case avx512 = 2

    /// The set in use.
    public static var current: InstructionSet { InstructionSet(rawValue: kat_simd_level()) ?? .generic }
    /// The best set this CPU runs.
    public static var best: InstructionSet { InstructionSet(rawValue: kat_simd_best()) ?? .generic }
    /// Switches to `set`, or to the best below it that the CPU runs; returns the set in use.
    @discardableResult
    public static func select(_ set: InstructionSet) -> InstructionSet { InstructionSet(rawValue: kat_simd_select(set.rawValue)) ?? .generic }

    public var name: String {
        switch self {
        case .generic: "generic"
        case .avx2: "avx2"
        case .avx512: "avx512"
        }
    }
}
