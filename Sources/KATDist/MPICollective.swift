import CMPI
import KATModel
import KATSupport
#if canImport(Glibc)
import Glibc
#endif

/// An MPI failure; names the call, the rank and MPI's error code.
public enum MPIError: Error, CustomStringConvertible {
    case call(String, code: Int32, rank: Int)

    public var description: String {
        switch self {
        case let .call(name, code, rank): return "rank \(rank): \(name) failed with MPI error \(code)"
        }
    }
}

/// An MPI communicator: the only type in kat-dist that calls MPI. As a `Collective` it
/// serves the trainer ranks; on the world communicator it also carries the point-to-point
/// messages between trainers and rollout ranks.
///
/// MPI runs with `MPI_THREAD_FUNNELED`: every call is made from the thread that
/// initialised MPI. Open MPI's handles import as non-Sendable pointers; this class wraps
/// them. `@unchecked Sendable` on that invariant: MPI runs with `MPI_THREAD_SERIALIZED`, and
/// one thread calls MPI at a time (the main thread, or, while the main thread computes a
/// backward pass and makes no MPI call, the gradient reducer's progress thread).
public final class MPICollective: Collective, @unchecked Sendable {
    let comm: MPI_Comm
    public let rank: Int
    public let size: Int
    let ownsWorld: Bool

    /// Largest element count per MPI call (counts are C ints). Settable so tests can
    /// exercise the chunking on small buffers; set it before any collective.
    nonisolated(unsafe) public static var maxChunk = 1 << 30

    /// Whether MPI lets another thread make calls while the main thread makes none
    /// (`MPI_THREAD_SERIALIZED` was provided).
    nonisolated(unsafe) public static var serialized = false

    /// Initialises MPI (serialized: one thread at a time) and returns the world communicator.
    public static func initWorld() throws -> MPICollective {
        var provided: Int32 = 0
        let rc = MPI_Init_thread(nil, nil, kat_mpi_thread_serialized(), &provided)
        guard rc == kat_mpi_success() else { throw MPIError.call("MPI_Init_thread", code: rc, rank: -1) }
        serialized = provided >= kat_mpi_thread_serialized()
        // Errors come back as codes, so a failing rank can report and abort the job.
        MPI_Comm_set_errhandler(kat_mpi_comm_world(), kat_mpi_errors_return())
        return MPICollective(comm: kat_mpi_comm_world(), owns: true)
    }

    init(comm: MPI_Comm, owns: Bool) {
        self.comm = comm
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(comm, &r)
        MPI_Comm_size(comm, &s)
        rank = Int(r)
        size = Int(s)
        ownsWorld = owns
    }


    private func check(_ rc: Int32, _ call: String) throws {
        if rc != kat_mpi_success() { throw MPIError.call(call, code: rc, rank: rank) }
    }

    /// Seconds a collective may wait before it is declared stalled (0: forever).
    public var watchdog: Double = 0
    /// Run while a collective waits (heartbeats, intake), so that waiting never starves
    /// the other duties of this rank.
    public var whileWaiting: (() throws -> Void)?

    /// Waits for a non-blocking collective, serving `whileWaiting` and watching the clock:
    /// a collective that does not complete within the watchdog means a rank of this
    /// communicator is stopped or gone.
    /// - Throws: `RunError.collectiveStalled`.
    private func complete(_ request: inout MPI_Request?, _ call: String) throws {
        let start = monotonicSeconds()
        var spins = 0
        while true {
            var flag: Int32 = 0
            try check(MPI_Test(&request, &flag, kat_mpi_status_ignore()), call)
            if flag != 0 { return }
            spins += 1
            if spins > 256 {
                try whileWaiting?()
                if watchdog > 0, monotonicSeconds() - start > watchdog {
                    throw RunError.collectiveStalled(call: call, seconds: watchdog)
                }
                usleep(spins > 4096 ? 200 : 20)
            }
        }
    }

    /// Sums a float buffer across ranks, in place.
    public func allreduceSum(_ buffer: FloatBuffer) throws { try allreduceSum(buffer.pointer, count: buffer.count) }

    /// Sums `count` floats across ranks, in place, in chunks that fit MPI's int counts.
    public func allreduceSum(_ buf: UnsafeMutablePointer<Float>, count: Int) throws {
        var off = 0
        while off < count {
            let n = min(MPICollective.maxChunk, count - off)
            var req: MPI_Request? = kat_mpi_request_null()
            try check(MPI_Iallreduce(kat_mpi_in_place(), buf + off, Int32(n), kat_mpi_float(), kat_mpi_sum(), comm, &req), "MPI_Iallreduce")
            try complete(&req, "MPI_Iallreduce")
            off += n
        }
    }

    /// Sums doubles across ranks, in place (small reductions: counts, losses).
    public func allreduceSum(_ values: inout [Double]) throws {
        let n = values.count
        try values.withUnsafeMutableBufferPointer { b in
            var req: MPI_Request? = kat_mpi_request_null()
            try check(MPI_Iallreduce(kat_mpi_in_place(), b.baseAddress, Int32(n), kat_mpi_double(), kat_mpi_sum(), comm, &req), "MPI_Iallreduce")
            try complete(&req, "MPI_Iallreduce")
        }
    }

    /// Broadcasts `count` floats from `root`, in chunks.
    public func broadcast(_ buf: UnsafeMutablePointer<Float>, count: Int, root: Int) throws {
        var off = 0
        while off < count {
            let n = min(MPICollective.maxChunk, count - off)
            var req: MPI_Request? = kat_mpi_request_null()
            try check(MPI_Ibcast(buf + off, Int32(n), kat_mpi_float(), Int32(root), comm, &req), "MPI_Ibcast")
            try complete(&req, "MPI_Ibcast")
            off += n
        }
    }

    /// Sends bytes to `dest` with `tag` (blocking).
    public func send(_ bytes: [UInt8], to dest: Int, tag: Int) throws {
        try bytes.withUnsafeBufferPointer { b in
            try check(MPI_Send(b.baseAddress, Int32(b.count), kat_mpi_byte(), Int32(dest), Int32(tag), comm), "MPI_Send")
        }
    }

    /// Receives a message of any length from `source` with `tag` (blocking).
    public func receive(from source: Int, tag: Int) throws -> [UInt8] {
        var status = MPI_Status()
        try check(MPI_Probe(Int32(source), Int32(tag), comm, &status), "MPI_Probe")
        var count: Int32 = 0
        MPI_Get_count(&status, kat_mpi_byte(), &count)
        var out = [UInt8](repeating: 0, count: Int(count))
        try out.withUnsafeMutableBufferPointer { b in
            try check(MPI_Recv(b.baseAddress, count, kat_mpi_byte(), Int32(source), Int32(tag), comm, kat_mpi_status_ignore()), "MPI_Recv")
        }
        return out
    }

    public func barrier() throws {
        var req: MPI_Request? = kat_mpi_request_null()
        try check(MPI_Ibarrier(comm, &req), "MPI_Ibarrier")
        try complete(&req, "MPI_Ibarrier")
    }

    /// Splits into sub-communicators by `color`, ranks ordered by `key`.
    public func split(color: Int, key: Int) throws -> MPICollective {
        var out: MPI_Comm? = kat_mpi_comm_null()
        try check(MPI_Comm_split(comm, Int32(color), Int32(key), &out), "MPI_Comm_split")
        guard let c = out else { throw MPIError.call("MPI_Comm_split", code: -1, rank: rank) }
        return MPICollective(comm: c, owns: false)
    }

    /// Max and min of one double over ranks.
    public func allreduceMaxMin(_ v: Double) throws -> (max: Double, min: Double) {
        var a = v, b = v
        // The buffers must stay put until the non-blocking calls complete.
        try withUnsafeMutablePointer(to: &a) { pa in
            var req: MPI_Request? = kat_mpi_request_null()
            try check(MPI_Iallreduce(kat_mpi_in_place(), pa, 1, kat_mpi_double(), kat_mpi_max(), comm, &req), "MPI_Iallreduce")
            try complete(&req, "MPI_Iallreduce")
        }
        try withUnsafeMutablePointer(to: &b) { pb in
            var req: MPI_Request? = kat_mpi_request_null()
            try check(MPI_Iallreduce(kat_mpi_in_place(), pb, 1, kat_mpi_double(), kat_mpi_min(), comm, &req), "MPI_Iallreduce")
            try complete(&req, "MPI_Iallreduce")
        }
        return (a, b)
    }

    /// Broadcasts bytes of any length from `root`.
    public func broadcast(bytes: [UInt8], root: Int) throws -> [UInt8] {
        var n = [Double(bytes.count)]
        if rank != root { n = [0] }
        try n.withUnsafeMutableBufferPointer { b in
            var req: MPI_Request? = kat_mpi_request_null()
            try check(MPI_Ibcast(b.baseAddress, 1, kat_mpi_double(), Int32(root), comm, &req), "MPI_Ibcast")
            try complete(&req, "MPI_Ibcast")
        }
        var out = rank == root ? bytes : [UInt8](repeating: 0, count: Int(n[0]))
        var off = 0
        while off < out.count {
            let len = min(MPICollective.maxChunk, out.count - off)
            try out.withUnsafeMutableBufferPointer { b in
                var req: MPI_Request? = kat_mpi_request_null()
                try check(MPI_Ibcast(b.baseAddress.map { $0 + off }, Int32(len), kat_mpi_byte(), Int32(root), comm, &req), "MPI_Ibcast")
                try complete(&req, "MPI_Ibcast")
            }
            off += len
        }
        return out
    }

    /// Every rank's bytes, in rank order, on every rank.
    public func allgather(bytes: [UInt8]) throws -> [[UInt8]] {
        var mine = Int64(bytes.count)
        var counts = [Int64](repeating: 0, count: size)
        try counts.withUnsafeMutableBufferPointer { c in
            try withUnsafeMutablePointer(to: &mine) { m in
                var req: MPI_Request? = kat_mpi_request_null()
                try check(MPI_Iallgather(m, 1, kat_mpi_int64(), c.baseAddress, 1, kat_mpi_int64(), comm, &req), "MPI_Iallgather")
                try complete(&req, "MPI_Iallgather")
            }
        }
        let total = counts.reduce(0, +)
        guard total <= Int64(Int32.max) else {
            // Counts of Allgatherv are C ints: larger messages go one broadcast at a time.
            var out: [[UInt8]] = []
            for r in 0..<size { out.append(try broadcast(bytes: bytes, root: r)) }
            return out
        }
        var sizes = counts.map { Int32($0) }
        var offsets = [Int32](repeating: 0, count: size)
        for r in 1..<max(1, size) { offsets[r] = offsets[r - 1] + sizes[r - 1] }
        var all = [UInt8](repeating: 0, count: Int(total))
        try bytes.withUnsafeBufferPointer { b in
            try all.withUnsafeMutableBufferPointer { a in
                try sizes.withUnsafeMutableBufferPointer { sz in
                    try offsets.withUnsafeMutableBufferPointer { off in
                        var req: MPI_Request? = kat_mpi_request_null()
                        try check(MPI_Iallgatherv(b.baseAddress, Int32(bytes.count), kat_mpi_byte(), a.baseAddress, sz.baseAddress, off.baseAddress,
                                                  kat_mpi_byte(), comm, &req), "MPI_Iallgatherv")
                        try complete(&req, "MPI_Iallgatherv")
                    }
                }
            }
        }
        return (0..<size).map { r in Array(all[Int(offsets[r])..<Int(offsets[r] + sizes[r])]) }
    }

    /// A non-blocking collective in flight, with the arrays it reads kept alive.
    public final class Request {
        var request: MPI_Request?
        let counts: UnsafeMutableBufferPointer<Int32>?
        let displacements: UnsafeMutableBufferPointer<Int32>?
        init(counts: [Int32]? = nil, displacements: [Int32]? = nil) {
            request = kat_mpi_request_null()
            self.counts = counts.map { c in
                let b = UnsafeMutableBufferPointer<Int32>.allocate(capacity: max(1, c.count))
                _ = b.initialize(from: c)
                return b
            }
            self.displacements = displacements.map { d in
                let b = UnsafeMutableBufferPointer<Int32>.allocate(capacity: max(1, d.count))
                _ = b.initialize(from: d)
                return b
            }
        }
        deinit { counts?.deallocate(); displacements?.deallocate() }
    }

    /// Starts summing `count` floats at `buffer` over the ranks, in place (count below 2^31).
    public func startAllreduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws -> Request {
        let r = Request()
        try check(MPI_Iallreduce(kat_mpi_in_place(), buffer, Int32(count), kat_mpi_float(), kat_mpi_sum(), comm, &r.request), "MPI_Iallreduce")
        return r
    }

    /// Starts a reduce-scatter: the sum over ranks of `send` (sum of `counts` floats), rank
    /// r receiving the r-th part (`counts[r]` floats) into `receive`.
    public func startReduceScatter(_ send: UnsafePointer<Float>, into receive: UnsafeMutablePointer<Float>, counts: [Int]) throws -> Request {
        let r = Request(counts: counts.map { Int32($0) })
        try check(MPI_Ireduce_scatter(send, receive, r.counts?.baseAddress, kat_mpi_float(), kat_mpi_sum(), comm, &r.request), "MPI_Ireduce_scatter")
        return r
    }

    /// Starts gathering every rank's part of `buffer` (rank r's `counts[r]` floats at
    /// `offsets[r]`) into every rank's `buffer`, in place.
    public func startAllgather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int], offsets: [Int]) throws -> Request {
        let r = Request(counts: counts.map { Int32($0) }, displacements: offsets.map { Int32($0) })
        try check(MPI_Iallgatherv(kat_mpi_in_place(), 0, kat_mpi_float(), buffer, r.counts?.baseAddress, r.displacements?.baseAddress,
                                  kat_mpi_float(), comm, &r.request), "MPI_Iallgatherv")
        return r
    }

    /// Gathers every rank's `counts[r]` floats into `full` at `offsets[r]` on `root` (whose
    /// `full` holds the sum of the counts; elsewhere it is not touched).
    public func gather(_ part: UnsafePointer<Float>, into full: UnsafeMutablePointer<Float>?, counts: [Int], offsets: [Int], root: Int) throws {
        let r = Request(counts: counts.map { Int32($0) }, displacements: offsets.map { Int32($0) })
        try check(MPI_Igatherv(part, Int32(counts[rank]), kat_mpi_float(), full, r.counts?.baseAddress, r.displacements?.baseAddress,
                               kat_mpi_float(), Int32(root), comm, &r.request), "MPI_Igatherv")
        try complete(&r.request, "MPI_Igatherv")
    }

    /// Whether a non-blocking collective has completed (and drives MPI's progress).
    public func test(_ r: Request) throws -> Bool {
        var flag: Int32 = 0
        try check(MPI_Test(&r.request, &flag, kat_mpi_status_ignore()), "MPI_Test")
        return flag != 0
    }

    /// Waits for a non-blocking collective, serving `whileWaiting`, within the watchdog.
    public func wait(_ r: Request) throws { try complete(&r.request, "MPI collective") }

    /// The ranks of this communicator that share memory with this one (one node).
    public func splitShared() throws -> MPICollective {
        var out: MPI_Comm? = kat_mpi_comm_null()
        try check(MPI_Comm_split_type(comm, kat_mpi_comm_type_shared(), Int32(rank), kat_mpi_info_null(), &out), "MPI_Comm_split_type")
        guard let c = out else { throw MPIError.call("MPI_Comm_split_type", code: -1, rank: rank) }
        return MPICollective(comm: c, owns: false)
    }

    /// The world ranks of this communicator's members, in its rank order (a local call).
    /// - Throws: `MPIError` when a call fails.
    public func members(inWorldOf world: MPICollective) throws -> [Int] {
        var mine: MPI_Group? = nil, whole: MPI_Group? = nil
        try check(MPI_Comm_group(comm, &mine), "MPI_Comm_group")
        try check(MPI_Comm_group(world.comm, &whole), "MPI_Comm_group")
        defer { MPI_Group_free(&mine); MPI_Group_free(&whole) }
        var local = (0..<Int32(size)).map { $0 }
        var out = [Int32](repeating: -1, count: size)
        try check(MPI_Group_translate_ranks(mine, Int32(size), &local, whole, &out), "MPI_Group_translate_ranks")
        return out.map(Int.init)
    }

    /// A window of memory shared by the ranks of this (node) communicator: rank 0 of it
    /// allocates `bytes`, the others nothing, and every rank gets the address of rank 0's
    /// part in its own address space. Collective over the communicator. The window lives
    /// until MPI is finalised.
    public func sharedMemory(bytes: Int) throws -> UnsafeMutableRawPointer {
        var base: UnsafeMutableRawPointer?
        var win: MPI_Win? = kat_mpi_win_null()
        let mine = rank == 0 ? bytes : 0
        try check(MPI_Win_allocate_shared(MPI_Aint(mine), 1, kat_mpi_info_null(), comm, &base, &win), "MPI_Win_allocate_shared")
        var size: MPI_Aint = 0, unit: Int32 = 0
        var root: UnsafeMutableRawPointer?
        try check(MPI_Win_shared_query(win, 0, &size, &unit, &root), "MPI_Win_shared_query")
        guard let root, Int(size) >= bytes else { throw MPIError.call("MPI_Win_shared_query", code: -1, rank: rank) }
        return root
    }

    /// Receives a message of exactly `bytes` bytes from `source` into `buffer` (blocking).
    public func receive(into buffer: UnsafeMutableRawPointer, bytes: Int, from source: Int, tag: Int) throws {
        var off = 0
        repeat {
            let n = min(MPICollective.maxChunk, bytes - off)
            try check(MPI_Recv(buffer + off, Int32(n), kat_mpi_byte(), Int32(source), Int32(tag), comm, kat_mpi_status_ignore()), "MPI_Recv")
            off += n
        } while off < bytes
    }

    /// Starts sending `bytes` bytes at `buffer`, which the caller keeps unchanged until the
    /// send completes (`test`); messages larger than the chunk size go as several.
    public func isend(from buffer: UnsafeRawPointer, bytes: Int, to dest: Int, tag: Int) throws -> [PendingRequest] {
        try chunked(bytes, "MPI_Isend") { off, n, req in MPI_Isend(buffer + off, n, kat_mpi_byte(), Int32(dest), Int32(tag), comm, &req) }
    }

    /// One non-blocking call per chunk of a `bytes`-byte message (at most `maxChunk` bytes
    /// each, since MPI counts are 32-bit): `start(offset, count, &request)`.
    private func chunked(_ bytes: Int, _ call: String,
                         _ start: (_ offset: Int, _ count: Int32, _ request: inout MPI_Request?) -> Int32) throws -> [PendingRequest] {
        var out: [PendingRequest] = []
        var off = 0
        repeat {
            let n = min(MPICollective.maxChunk, bytes - off)
            var req: MPI_Request? = kat_mpi_request_null()
            try check(start(off, Int32(n), &req), call)
            out.append(PendingRequest(request: req, buffer: nil))
            off += n
        } while off < bytes
        return out
    }

    /// Whether a message with `tag` from `source` (nil: any) is waiting; returns its source and size.
    public func probe(source: Int?, tag: Int) throws -> (source: Int, bytes: Int)? {
        var flag: Int32 = 0
        var status = MPI_Status()
        try check(MPI_Iprobe(source.map { Int32($0) } ?? kat_mpi_any_source(), Int32(tag), comm, &flag, &status), "MPI_Iprobe")
        guard flag != 0 else { return nil }
        var count: Int32 = 0
        MPI_Get_count(&status, kat_mpi_byte(), &count)
        return (Int(kat_mpi_status_source(&status)), Int(count))
    }

    /// A non-blocking send or receive. A send made from bytes owns its copy of them until
    /// it completes; a receive writes into memory the caller keeps until it completes.
    public final class PendingRequest {
        var request: MPI_Request?
        /// The copy of the message a send owns, if it made one.
        let buffer: UnsafeMutableRawBufferPointer?
        init(request: MPI_Request?, buffer: UnsafeMutableRawBufferPointer?) { self.request = request; self.buffer = buffer }
        deinit { buffer?.deallocate() }
    }

    /// Starts sending `bytes` to `dest`; poll the result with `test`. With `synchronous`,
    /// the send completes only once the receiver has started receiving it (MPI_Issend):
    /// that is what makes a full receiver push back on its senders.
    public func isend(_ bytes: [UInt8], to dest: Int, tag: Int, synchronous: Bool = false) throws -> PendingRequest {
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, bytes.count), alignment: 64)
        bytes.withUnsafeBytes { buf.copyMemory(from: $0) }
        var req: MPI_Request? = kat_mpi_request_null()
        if synchronous {
            try check(MPI_Issend(buf.baseAddress, Int32(bytes.count), kat_mpi_byte(), Int32(dest), Int32(tag), comm, &req), "MPI_Issend")
        } else {
            try check(MPI_Isend(buf.baseAddress, Int32(bytes.count), kat_mpi_byte(), Int32(dest), Int32(tag), comm, &req), "MPI_Isend")
        }
        return PendingRequest(request: req, buffer: buf)
    }

    /// Starts receiving a message of exactly `bytes` bytes from `source` into `buffer`,
    /// which the caller keeps until every returned request completes (`unfinished`);
    /// messages larger than the chunk size come as several, matched in order (MPI does
    /// not let messages of one source and tag overtake each other).
    public func ireceive(into buffer: UnsafeMutableRawPointer, bytes: Int, from source: Int, tag: Int) throws -> [PendingRequest] {
        try chunked(bytes, "MPI_Irecv") { off, n, req in MPI_Irecv(buffer + off, n, kat_mpi_byte(), Int32(source), Int32(tag), comm, &req) }
    }

    /// Whether a pending send or receive has completed (and drives MPI's progress).
    public func test(_ p: PendingRequest) throws -> Bool {
        var flag: Int32 = 0
        try check(MPI_Test(&p.request, &flag, kat_mpi_status_ignore()), "MPI_Test")
        return flag != 0
    }

    /// The requests of `requests` that have not completed yet (each is tested once).
    public func unfinished(_ requests: [PendingRequest]) throws -> [PendingRequest] {
        var left: [PendingRequest] = []
        for r in requests where try !test(r) { left.append(r) }
        return left
    }

    /// Seconds since an arbitrary origin, MPI's wall clock.
    public static func wallTime() -> Double { MPI_Wtime() }

    /// Ends the whole job: every rank, with `code`. Prints `message` first.
    public func abort(_ message: String, code: Int32 = 1) -> Never {
        let line = Array("kat-dist: rank \(rank): \(message)\n".utf8)
        _ = line.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count) }
        MPI_Abort(comm, code)
        exit(code)
    }

    public func finalize() {
        if ownsWorld { MPI_Finalize() }
    }
}
