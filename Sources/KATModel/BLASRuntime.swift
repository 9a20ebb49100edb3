import KATSupport
import CBLAS
import Foundation

/// OpenBLAS's kernel choice and threads, checked at start-up.
///
/// OpenBLAS picks its kernels when the library loads, from `OPENBLAS_CORETYPE` or its own
/// CPU detection. Some releases do not recognise newer CPUs and fall back to the generic
/// Prescott kernels (about 6x slower sgemm). kat-dist detects that, chooses a kernel
/// from the CPU's own feature flags, and re-executes itself with `OPENBLAS_CORETYPE` set
/// before any work starts. `OPENBLAS_CORETYPE` set by the user is always respected;
/// `KAT_BLAS_AUTO=0` turns the choice off.
public enum BLASRuntime {
    /// Kernels OpenBLAS falls back to, or that are far below what a modern x86 CPU runs.
    static let genericCores: Set<String> = ["prescott", "core2", "penryn", "dunnington", "nehalem", "atom",
                                            "katmai", "coppermine", "northwood", "banias", "athlon", "opteron",
                                            "barcelona", "bobcat", "unknown", ""]

    /// The core name OpenBLAS runs with.
    public static var coreName: String {
        guard let p = openblas_get_corename() else { return "unknown" }
        return String(cString: p)
    }

    public static var threads: Int { Int(openblas_get_num_threads()) }

    public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(max(1, n))) }

    /// CPU feature flags from /proc/cpuinfo (empty where that file does not exist).
    public static func cpuFlags() -> Set<String> {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return [] }
        for line in text.split(separator: "\n") where line.hasPrefix("flags") {
            if let colon = line.firstIndex(of: ":") {
                return Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
            }
        }
        return []
    }

    /// The best OpenBLAS x86-64 kernel whose instructions the CPU has, or nil.
    public static func bestCore(flags: Set<String>) -> String? {
        if ["avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd", "avx2", "fma"].allSatisfy(flags.contains) { return "SkylakeX" }
        if ["avx2", "fma"].allSatisfy(flags.contains) { return "Haswell" }
        if flags.contains("avx") { return "Sandybridge" }
        return nil
    }

    /// Environment variable set on the re-executed process, so it happens at most once.
    static let marker = "KAT_BLAS_REEXEC"

    /// If OpenBLAS fell back to a generic kernel that the CPU outclasses, re-executes the
    /// current program with `OPENBLAS_CORETYPE` set. Returns only when no re-exec was
    /// needed (or it failed, in which case the program goes on with the slow kernel).
    public static func reexecWithBetterKernelIfNeeded() {
        let env = ProcessInfo.processInfo.environment
        if env["OPENBLAS_CORETYPE"] != nil || env[marker] != nil || env["KAT_BLAS_AUTO"] == "0" { return }
        guard genericCores.contains(coreName.lowercased()), let best = bestCore(flags: cpuFlags()) else { return }
        setenv("OPENBLAS_CORETYPE", best, 1)
        setenv(marker, coreName, 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        // execv only returns on failure: carry on with what OpenBLAS chose.
        unsetenv("OPENBLAS_CORETYPE")
    }

    /// One line saying which kernel runs and why.
    public static var summary: String {
        let env = ProcessInfo.processInfo.environment
        var s = "OpenBLAS kernel \(coreName), \(threads) thread\(threads == 1 ? "" : "s")"
        if let fallback = env[marker] {
            s += " (chosen from the CPU's features; OpenBLAS's own detection gave \(fallback))"
        } else if let set = env["OPENBLAS_CORETYPE"] {
            s += " (OPENBLAS_CORETYPE=\(set))"
            if let best = bestCore(flags: cpuFlags()), best.lowercased() != coreName.lowercased(), set.lowercased() != best.lowercased() {
                s += "; this CPU also runs \(best)"
            }
        } else if genericCores.contains(coreName.lowercased()), let best = bestCore(flags: cpuFlags()) {
            s += " (generic fallback: set OPENBLAS_CORETYPE=\(best) or KAT_BLAS_AUTO=1 for about 6x faster sgemm)"
        }
        s += "; element-wise kernels \(InstructionSet.current.name)"
        return s
    }

    /// Largest relative sgemm error accepted: float32 dot products of 53 terms carry ~1e-6.
    public static let selfCheckTolerance: Float = 1e-4

    /// Checks a small sgemm (odd sizes, B transposed) against a plain loop in double.
    /// Returns the largest error relative to the sum of absolute products.
    public static func selfCheck() -> Float {
        let m = 37, n = 29, k = 53
        var rng = SplitMix64(seed: 99)
        let a = FloatBuffer(count: m * k), b = FloatBuffer(count: n * k), c = FloatBuffer(count: m * n)
        for i in 0..<a.count { a[i] = rng.nextGaussian() }
        for i in 0..<b.count { b[i] = rng.nextGaussian() }
        sgemm(transA: false, transB: true, m: m, n: n, k: k, alpha: 1, a: a.pointer, lda: k, b: b.pointer, ldb: k, beta: 0, c: c.pointer, ldc: n)
        var worst: Float = 0
        for i in 0..<m {
            for j in 0..<n {
                var s: Double = 0, mag: Double = 0
                for l in 0..<k { let t = Double(a[i * k + l]) * Double(b[j * k + l]); s += t; mag += abs(t) }
                worst = max(worst, Float(abs(Double(c[i * n + j]) - s) / max(mag, 1e-30)))
            }
        }
        return worst
    }
}
