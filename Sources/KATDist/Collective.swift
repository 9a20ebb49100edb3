import KATModel

/// The collective operations the trainer loop needs, over the trainer ranks.
///
/// Two implementations: `MPICollective` (ranks of an MPI job) and `LocalCollective` (one
/// process, where every operation is the identity). The trainer loop is written once
/// against this protocol and runs the same in one process and on N ranks.
public protocol Collective: AnyObject {
    /// This trainer's index, 0..<size.
    var rank: Int { get }
    /// Number of trainers.
    var size: Int { get }
    /// Sums a float buffer over trainers, in place.
    func allreduceSum(_ buffer: FloatBuffer) throws
    /// Sums a few doubles over trainers, in place.
    func allreduceSum(_ values: inout [Double]) throws
    /// The largest and smallest of one value over trainers.
    func allreduceMaxMin(_ value: Double) throws -> (max: Double, min: Double)
    /// `root`'s bytes, on every trainer.
    func broadcast(bytes: [UInt8], root: Int) throws -> [UInt8]
    /// Every trainer's bytes, in rank order, on every trainer.
    func allgather(bytes: [UInt8]) throws -> [[UInt8]]
}

extension Collective {
    /// Whether `flag` is true on any trainer (for example a stop request): every trainer
    /// gets the same answer, so they all stop after the same step.
    public func anyTrue(_ flag: Bool) throws -> Bool {
        var v = [flag ? 1.0 : 0.0]
        try allreduceSum(&v)
        return v[0] > 0
    }
}

/// The collective of a single process: one trainer, every operation the identity.
public final class LocalCollective: Collective {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func allreduceSum(_ buffer: FloatBuffer) throws {}
    public func allreduceSum(_ values: inout [Double]) throws {}
    public func allreduceMaxMin(_ value: Double) throws -> (max: Double, min: Double) { (value, value) }
    public func broadcast(bytes: [UInt8], root: Int) throws -> [UInt8] { bytes }
    public func allgather(bytes: [UInt8]) throws -> [[UInt8]] { [bytes] }
}
