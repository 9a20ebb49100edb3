import Foundation
import KATModel
import KATSupport
#if canImport(Glibc)
import Glibc
#endif

/// Sums the gradient over the trainers in buckets of the parameter buffer, each started as
/// soon as the backward stages that fill it are done on the step's last micro-batch, so
/// that communication runs while later layers still compute (`comm.overlap`).
///
/// Buckets are contiguous ranges of about `comm.bucket_mib` in parameter order. They are
/// always started in the same order (the last bucket first, as backward completes them),
/// with or without overlap, so both give the same sums, bit for bit. With sharded
/// optimizer state (`optimizer.shard`) each bucket is reduce-scattered instead: a trainer
/// receives the summed gradient of its own slice of the parameters only.
///
/// MPI moves data only inside its calls, and a backward stage takes long: while the last
/// micro-batch's backward runs, a progress thread starts the buckets as they become
/// complete and tests them, so transfers go on during the computation. The main thread
/// makes no MPI call meanwhile (MPI runs serialized: one thread at a time).
final class GradientReducer: @unchecked Sendable {
    let collective: MPICollective
    let grads: FloatBuffer
    let buckets: [Range<Int>]
    let overlap: Bool
    /// Each trainer's slice of the parameters, when the optimizer state is sharded.
    let slices: [Range<Int>]?
    /// This trainer's slice of the summed gradient (sharded only).          (slice.count)
    let sliceGradient: FloatBuffer?
    private var requests: [MPICollective.Request] = []
    /// Every parameter at or after this offset has its final gradient of the update.
    private var readyFrom = 0
    /// The next bucket to start, counting down.
    private var next = -1
    /// The progress thread's state, under `lock`: what the main thread has finished, and
    /// whether the thread should stop.
    private let lock = NSLock()
    private var sharedReadyFrom = Int.max
    private var stopThread = false
    private var threadFailure: Error?
    private var threadDone: DispatchSemaphore?

    /// Each of `parts` trainers' share of `count` parameters: contiguous, as even as can be.
    static func slices(count: Int, parts: Int) -> [Range<Int>] {
        (0..<parts).map { r in (count * r / parts)..<(count * (r + 1) / parts) }
    }

    /// - Parameter boundaries: offsets where backward stages meet (a bucket never spans
    ///   two stages, so each can start as soon as its stage is done).
    init(collective: MPICollective, grads: FloatBuffer, boundaries: [Int], bucketBytes: Int, overlap: Bool, sharded: Bool) {
        self.collective = collective
        self.grads = grads
        self.overlap = overlap
        let per = max(1, bucketBytes / 4)
        let cuts = ([0] + boundaries.filter { $0 > 0 && $0 < grads.count }.sorted() + [grads.count])
        var b: [Range<Int>] = []
        for (lo, hi) in zip(cuts, cuts.dropFirst()) where lo < hi {
            b += stride(from: lo, to: hi, by: per).map { $0..<min(hi, $0 + per) }
        }
        buckets = b
        if sharded {
            let s = GradientReducer.slices(count: grads.count, parts: collective.size)
            slices = s
            sliceGradient = FloatBuffer(count: s[collective.rank].count)
        } else {
            slices = nil
            sliceGradient = nil
        }
    }

    /// The slice of the parameters this trainer updates.
    var mySlice: Range<Int> { slices?[collective.rank] ?? 0..<grads.count }

    /// Prepares for an update: nothing reduced yet.
    func begin() {
        requests = []
        readyFrom = grads.count
        next = buckets.count - 1
    }

    /// Whether the progress thread owns MPI now (the main thread must make no MPI call).
    var progressThreadRunning: Bool { threadDone != nil }

    /// Called before the last micro-batch's backward pass: with overlap, starts the
    /// progress thread, which owns MPI until `finish`.
    func beginLastBackward() {
        guard overlap, MPICollective.serialized, threadDone == nil else { return }
        lock.lock()
        sharedReadyFrom = grads.count
        stopThread = false
        threadFailure = nil
        lock.unlock()
        let done = DispatchSemaphore(value: 0)
        threadDone = done
        let thread = Thread { [self] in
            defer { done.signal() }
            while true {
                lock.lock()
                let from = sharedReadyFrom, stop = stopThread
                lock.unlock()
                do {
                    readyFrom = min(readyFrom, from)
                    try startReady()
                    try progress()
                } catch {
                    lock.lock(); threadFailure = error; lock.unlock()
                    return
                }
                if stop { return }
                // Polling every millisecond keeps transfers flowing (a socket's buffer holds
                // far more than a millisecond of a network link) at little cost to the
                // computation on the same core.
                usleep(1000)
            }
        }
        thread.start()
    }

    /// A backward stage of the last micro-batch finished: the gradient of `range` is final.
    /// With the progress thread running, it is told; otherwise the buckets now complete
    /// start here (with overlap) and those in flight advance.
    func completed(_ range: Range<Int>) throws {
        if threadDone != nil {
            lock.lock()
            sharedReadyFrom = min(sharedReadyFrom, range.lowerBound)
            lock.unlock()
            return
        }
        readyFrom = min(readyFrom, range.lowerBound)
        if overlap { try startReady() }
        try progress()
    }

    /// Advances the reductions in flight (MPI progresses only inside its calls).
    func progress() throws {
        for r in requests { _ = try collective.test(r) }
    }

    private func startReady() throws {
        while next >= 0, buckets[next].lowerBound >= readyFrom {
            try start(buckets[next])
            next -= 1
        }
    }

    private func start(_ b: Range<Int>) throws {
        if let slices, let sliceGradient {
            let counts = slices.map { max(0, min($0.upperBound, b.upperBound) - max($0.lowerBound, b.lowerBound)) }
            let mine = mySlice
            let at = max(0, min(mine.upperBound, max(b.lowerBound, mine.lowerBound)) - mine.lowerBound)
            requests.append(try collective.startReduceScatter(UnsafePointer(grads.pointer + b.lowerBound), into: sliceGradient.pointer + at,
                                                              counts: counts))
        } else {
            requests.append(try collective.startAllreduceSum(grads.pointer + b.lowerBound, count: b.count))
        }
    }

    /// Starts every bucket not started yet and waits for all of them.
    func finish() throws {
        if let done = threadDone {
            lock.lock(); stopThread = true; lock.unlock()
            done.wait()
            threadDone = nil
            lock.lock(); let failure = threadFailure; lock.unlock()
            if let failure { throw failure }
        }
        readyFrom = 0
        try startReady()
        for r in requests { try collective.wait(r) }
        requests = []
    }

    /// The global gradient norm over all parameters (sharded: the slices' sums of squares
    /// added over trainers).
    func globalNorm() throws -> Float {
        guard let sliceGradient else { return Optimizer.globalNorm(grads) }
        var s = [Optimizer.sumOfSquares(sliceGradient.pointer, count: sliceGradient.count, offset: mySlice.lowerBound)]
        try collective.allreduceSum(&s)
        return Float(s[0].squareRoot())
    }

    /// The whole optimizer state on trainer 0 (for a checkpoint, which holds every
    /// parameter's moments whatever the sharding); nil on the other trainers. Collective.
    func gatherOptimizer(_ optimizer: Optimizer, layout: any ParameterTable) throws -> Optimizer? {
        guard let slices else { return optimizer }
        let full = collective.rank == 0 ? Optimizer(config: optimizer.config, layout: layout) : nil
        full?.t = optimizer.t
        if optimizer.m.count > 0 {
            try collective.gather(optimizer.m.pointer, into: full?.m.pointer, counts: slices.map(\.count), offsets: slices.map(\.lowerBound), root: 0)
            try collective.gather(optimizer.v.pointer, into: full?.v.pointer, counts: slices.map(\.count), offsets: slices.map(\.lowerBound), root: 0)
        }
        return full
    }

    /// After a sharded update: every trainer's slice of the new parameters, on every trainer.
    func gatherParameters(_ params: FloatBuffer) throws {
        guard let slices else { return }
        let r = try collective.startAllgather(params.pointer, counts: slices.map(\.count), offsets: slices.map(\.lowerBound))
        try collective.wait(r)
    }
}
