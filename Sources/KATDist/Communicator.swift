import CMPI
import KATModel
#if canImport(Glibc)
import Glibc
#endif

/// An MPI failure; the description names the call and the rank.
public struct MPIError: Error, CustomStringConvertible {
    public var call: String
    public var code: Int32
    public var rank: Int
    public var description: String { "rank \(rank): \(call) failed with MPI error \(code)" }
}

/// The MPI communicator: the only type in kat-dist that calls MPI.
///
/// MPI runs with `MPI_THREAD_FUNNELED`: every call is made from the thread that
/// initialised MPI. Open MPI's handles import as non-Sendable pointers; this class wraps
/// them. `@unchecked Sendable` on that invariant: it is used from the MPI thread only.
public final class Communicator: @unchecked Sendable {
    let comm: MPI_Comm
    public let rank: Int
    public let size: Int
    let ownsWorld: Bool

    /// Largest element count per MPI call (counts are C ints). Settable so tests can
    /// exercise the chunking on small buffers; set it before any collective.
    nonisolated(unsafe) public static var maxChunk = 1 << 30

    /// Initialises MPI (funneled) and returns the world communicator.
    public static func initWorld() throws -> Communicator {
        var provided: Int32 = 0
        let rc = MPI_Init_thread(nil, nil, kat_mpi_thread_funneled(), &provided)
        guard rc == kat_mpi_success() else { throw MPIError(call: "MPI_Init_thread", code: rc, rank: -1) }
        // Errors come back as codes, so a failing rank can report and abort the job.
        MPI_Comm_set_errhandler(kat_mpi_comm_world(), kat_mpi_errors_return())
        return Communicator(comm: kat_mpi_comm_world(), owns: true)
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

    /// Whether this process was started by an MPI launcher (mpirun, srun).
    public static var launchedByMPI: Bool {
        getenv("OMPI_COMM_WORLD_SIZE") != nil || getenv("PMIX_RANK") != nil || getenv("PMI_RANK") != nil
    }

    private func check(_ rc: Int32, _ call: String) throws {
        if rc != kat_mpi_success() { throw MPIError(call: call, code: rc, rank: rank) }
    }

    /// Sums `count` floats across ranks, in place, in chunks that fit MPI's int counts.
    public func allreduceSum(_ buf: UnsafeMutablePointer<Float>, count: Int) throws {
        var off = 0
        while off < count {
            let n = min(Communicator.maxChunk, count - off)
            try check(MPI_Allreduce(kat_mpi_in_place(), buf + off, Int32(n), kat_mpi_float(), kat_mpi_sum(), comm), "MPI_Allreduce")
            off += n
        }
    }

    /// Sums doubles across ranks, in place (small reductions: counts, losses).
    public func allreduceSum(_ values: inout [Double]) throws {
        let n = values.count
        try values.withUnsafeMutableBufferPointer { b in
            try check(MPI_Allreduce(kat_mpi_in_place(), b.baseAddress, Int32(n), kat_mpi_double(), kat_mpi_sum(), comm), "MPI_Allreduce")
        }
    }

    /// Broadcasts `count` floats from `root`, in chunks.
    public func broadcast(_ buf: UnsafeMutablePointer<Float>, count: Int, root: Int) throws {
        var off = 0
        while off < count {
            let n = min(Communicator.maxChunk, count - off)
            try check(MPI_Bcast(buf + off, Int32(n), kat_mpi_float(), Int32(root), comm), "MPI_Bcast")
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

    public func barrier() throws { try check(MPI_Barrier(comm), "MPI_Barrier") }

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
