import Foundation
import KATDist
import KATModel
import KATSupport
import KATTrie

// The measurements behind the scaling suite (Benchmarks/scaling.sh) that kat-dist's own
// runs do not record: the kernel rate split into its linear and attention parts, the
// allreduce and point-to-point cost at every message size, and the time for new weights
// to reach every rank through the tree of node leaders. Each prints one whitespace-separated
// row per measurement after a `#` header, so the suite's driver parses them.

/// The value of `--name` as a list of integers separated by commas, or `def`.
func listOption(_ name: String, _ def: [Int]) -> [Int] {
    let a = CommandLine.arguments
    guard let i = a.firstIndex(of: "--" + name) else { return def }
    let words = i + 1 < a.count ? a[i + 1].split(separator: ",", omittingEmptySubsequences: false) : []
    let v = words.compactMap { Int($0) }
    guard !v.isEmpty, v.count == words.count, v.allSatisfy({ $0 >= 1 }) else {
        fail("--\(name) needs whole numbers of at least 1 separated by commas")
    }
    return v
}

// MARK: - Kernel rate

/// `kat-bench compute [--widths 128,256] [--repeat 2] [--head-vocab 16384] [--workloads]`:
/// forward+backward of GPT-2 batches (L=4, NH=4, one BLAS thread) whose FLOPs are mostly
/// linear (many short sequences), partly attention (two long sequences), or mostly the
/// output head (a large vocabulary), at each width C; with `--workloads`, also the trie
/// benchmark's W1-W3 batches, flat and as tries, at C=256. Each row gives the batch's FLOPs
/// split as they are counted (6 x layer parameters per token, 6 V C per row with children,
/// 12 C L per (query, key) pair), the best wall time and the best CPU time of this thread
/// over the rounds (on a shared machine the CPU time is the work itself, the wall time
/// also holds what other processes took), and the activation memory. The rounds visit
/// every batch in turn, so a change in the machine's load reaches all of them.
func computeBenchmark() throws {
    BLASRuntime.setThreads(1)
    let widths = listOption("widths", [128, 256]), reps = option("repeat", 2), headVocab = option("head-vocab", 16384)
    let timeWorkloads = CommandLine.arguments.contains("--workloads")
    var rng = SplitMix64(seed: 11)
    func sequences(_ n: Int, _ len: Int) -> [[Int]] { (0..<n).map { _ in (0..<len).map { _ in Int(rng.next() % 256) } } }
    struct Case { let name: String; let config: GPT2Config; let batch: PackedBatch; let timed: Bool }
    var cases: [Case] = []
    for c in widths {
        // About the same FLOPs at every width: fewer tokens when wider.
        let scale = max(1, 256 / c)
        let shapes: [(String, Int, Int, Int)] = [("short", 32 * scale, 64, 260), ("long", 2, 1024, 260)]
            + (c == 256 ? [("head", 16, 64, headVocab)] : [])
        for (name, n, len, vocab) in shapes {
            let cfg = GPT2Config(vocabSize: vocab, nPositions: 1024, nEmbd: c, nLayer: 4, nHead: 4)
            cases.append(Case(name: name, config: cfg, batch: try PackedBatch(sequences: sequences(n, len), vocabSize: vocab, maxPositions: 1024), timed: true))
        }
    }
    // The trie benchmark's batches (timed with --workloads, else counted only).
    let wcfg = GPT2Config(vocabSize: 260, nPositions: 1024, nEmbd: 256, nLayer: 4, nHead: 4)
    for (name, seqs) in workloads(scale: 1) {
        let tag = name.split(separator: " ").first.map(String.init) ?? name
        let trie = Trie(sequences: seqs)
        cases.append(Case(name: "\(tag)-flat", config: wcfg, batch: try PackedBatch(sequences: seqs.map { $0.map(Int.init) }, vocabSize: 260, maxPositions: 1024),
                          timed: timeWorkloads))
        cases.append(Case(name: "\(tag)-trie", config: wcfg, batch: try PackedBatch(tokens: trie.tokens.map(Int.init), parents: trie.parents.map(Int.init),
                                                                                      vocabSize: 260, maxPositions: 1024), timed: timeWorkloads))
    }
    // One model per batch, each with its workspace allocated by a first pass.
    var models: [(any LanguageModel, [Float])?] = []
    for c in cases {
        guard c.timed else { models.append(nil); continue }
        let m = try c.config.makeModel()
        m.initialize(seed: 1)
        let d = (0..<c.batch.count).map { _ in Float(rng.nextDouble() - 0.5) * 1e-3 }
        m.zeroGrad(); m.forward(c.batch); m.backward(dlogprobs: d)
        models.append((m, d))
    }
    var best = [Double](repeating: .infinity, count: cases.count), bestCPU = best
    var sg = 0.0
    for _ in 0..<reps {
        for (k, c) in cases.enumerated() {
            guard let (m, d) = models[k] else { continue }
            m.zeroGrad()
            let t0 = now(), c0 = threadCPUSeconds()
            m.forward(c.batch); m.backward(dlogprobs: d)
            best[k] = min(best[k], now() - t0)
            bestCPU[k] = min(bestCPU[k], threadCPUSeconds() - c0)
        }
        sg = max(sg, sgemmGFLOPs(n: 1024, reps: 1))
    }
    print("# \(BLASRuntime.summary)")
    print("# forward+backward, GPT-2 L=4 NH=4, 1 BLAS thread, best of \(reps) rounds; FLOPs counted as 6 x layer params per token, 6 V C per head row, 12 C L per attention pair")
    print(String(format: "# sgemm 1024^3 GFLOP/s %.1f (1 thread, same run)", sg))
    print("batch  C  L  V  rows  head_rows  pairs  layer_gflop  head_gflop  attn_gflop  best_s  cpu_s  act_mib")
    for (k, c) in cases.enumerated() {
        let b = c.batch, cfg = c.config
        let layer = Double(b.count) * cfg.layerFLOPsPerToken / 1e9
        let head = Double(b.headRows.count) * cfg.headFLOPsPerRow / 1e9
        let attn = Double(b.attentionPairs) * cfg.flopsPerAttentionPair / 1e9
        func cell(_ v: Double, _ f: String) -> NSString { v.isFinite ? String(format: f, v) as NSString : "-" }
        let act = models[k].map { Double($0.0.workspaceBytes) / 1048576 } ?? .nan
        print(String(format: "%@  %d  %d  %d  %d  %d  %d  %.4f  %.4f  %.4f  %@  %@  %@", c.name as NSString, cfg.nEmbd, cfg.nLayer, cfg.vocabSize,
                     b.count, b.headRows.count, b.attentionPairs, layer, head, attn, cell(best[k], "%.5f"), cell(bestCPU[k], "%.5f"), cell(act, "%.0f")))
    }
}

/// CPU seconds this thread has run (with one BLAS thread, all of a pass's work).
func threadCPUSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

// MARK: - Allreduce against message size

/// The node of every rank: the lowest world rank that shares memory with it.
func nodeKeys(_ world: MPICollective) throws -> (node: MPICollective, keys: [Int]) {
    let node = try world.splitShared()
    let members = try node.allgather(bytes: withUnsafeBytes(of: Int64(world.rank)) { Array($0) })
    let mine = members.map { $0.withUnsafeBytes { Int($0.loadUnaligned(as: Int64.self)) } }.min() ?? world.rank
    let all = try world.allgather(bytes: withUnsafeBytes(of: Int64(mine)) { Array($0) })
    return (node, all.map { $0.withUnsafeBytes { Int($0.loadUnaligned(as: Int64.self)) } })
}

/// `mpirun -np P kat-bench allreduce --sweep [--min-kib 4] [--max-mib 16] [--repeat 5]`: for
/// each message size from min to max by factors of 4, the time of kat-dist's in-place float
/// allreduce over all ranks (until the last rank has finished) (best and median of the repeats, more repeats for small
/// messages) and its bus bandwidth (2 (P-1)/P x bytes / time, the ring's traffic per rank),
/// the one-way time of a message of the same size between ranks 0 and 1 (half a ping-pong),
/// and the time for ranks 0 and 1 to send each other that message at once (an exchange).
func allreduceSweep() throws {
    let comm = try MPICollective.initWorld()
    defer { comm.finalize() }
    let (_, keys) = try nodeKeys(comm)
    let minBytes = option("min-kib", 4) * 1024, maxBytes = option("max-mib", 16) * 1_048_576, reps = option("repeat", 5)
    let buf = FloatBuffer(count: 2 * maxBytes / 4) // the second half receives the exchange
    for i in 0..<buf.count { buf[i] = Float(i % 7) }
    let p = Double(comm.size)
    if comm.rank == 0 {
        print("# allreduce sweep: \(comm.size) ranks on \(Set(keys).count) node(s); one-way time between ranks 0 and 1 (same node: \(keys[0] == keys[min(1, keys.count - 1)]))")
        print("bytes  repeats  allreduce_best_s  allreduce_median_s  busbw_GBps  oneway_best_s  oneway_median_s  p2p_GBps  exchange_best_s")
    }
    var bytes = minBytes
    while bytes <= maxBytes {
        let count = bytes / 4
        let n = max(reps, min(100, reps * (1 << 20) / bytes))
        var times: [Double] = [], oneway: [Double] = [], exchange: [Double] = []
        // Warm-up: connections and registration.
        try comm.allreduceSum(buf.pointer, count: count)
        for _ in 0..<n {
            try comm.barrier()
            let t0 = MPICollective.wallTime()
            try comm.allreduceSum(buf.pointer, count: count)
            // Until the last rank has the sum: a rank's part may end early (the root's last
            // send completes once the kernel has buffered it).
            times.append(try comm.allreduceMaxMin(MPICollective.wallTime() - t0).max)
        }
        if comm.size > 1 {
            for _ in 0..<n {
                try comm.barrier()
                let t0 = MPICollective.wallTime()
                if comm.rank == 0 {
                    _ = try comm.isend(from: buf.pointer, bytes: bytes, to: 1, tag: 21).map { s in while try !comm.test(s) { usleep(20) } }
                    try comm.receive(into: buf.pointer, bytes: bytes, from: 1, tag: 22)
                } else if comm.rank == 1 {
                    try comm.receive(into: buf.pointer, bytes: bytes, from: 0, tag: 21)
                    _ = try comm.isend(from: buf.pointer, bytes: bytes, to: 0, tag: 22).map { s in while try !comm.test(s) { usleep(20) } }
                }
                oneway.append((MPICollective.wallTime() - t0) / 2)
            }
            // Exchange: ranks 0 and 1 send each other the message at the same time (what
            // one step of a ring does on each link).
            let half = UnsafeMutableRawPointer(buf.pointer) + bytes
            let room = buf.count * 4 - bytes >= bytes
            for _ in 0..<n where room {
                try comm.barrier()
                let t0 = MPICollective.wallTime()
                if comm.rank < 2 {
                    let other = 1 - comm.rank
                    let sends = try comm.isend(from: buf.pointer, bytes: bytes, to: other, tag: 23)
                    try comm.receive(into: half, bytes: bytes, from: other, tag: 23)
                    for s in sends { while try !comm.test(s) { usleep(20) } }
                }
                exchange.append(try comm.allreduceMaxMin(MPICollective.wallTime() - t0).max)
            }
        }
        for i in 0..<count { buf[i] = Float(i % 7) } // keep the sums finite
        if comm.rank == 0 {
            times.sort(); oneway.sort()
            let med = times[times.count / 2], ow = oneway.isEmpty ? Double.nan : oneway[0]
            let owMed = oneway.isEmpty ? Double.nan : oneway[oneway.count / 2]
            exchange.sort()
            print(String(format: "%d  %d  %.7f  %.7f  %.4f  %.7f  %.7f  %.4f  %@", bytes, n, times[0], med,
                         Double(bytes) * 2 * (p - 1) / p / times[0] / 1e9, ow, owMed, Double(bytes) / ow / 1e9,
                         exchange.isEmpty ? "-" : String(format: "%.7f", exchange[0]) as NSString))
        }
        bytes *= 4
    }
}

// MARK: - Weights through the tree of node leaders

/// `mpirun -np P kat-bench weightsync [--mib 16] [--repeat 5]`: rank 0 plays trainer 0 and
/// every other rank a rollout rank. The layout is kat-dist's: a binary tree of node
/// leaders (rank 0, then the lowest rank of every other node, in rank order; leader i sends
/// to leaders 2i+1 and 2i+2), each node holding the weights once in MPI-3 shared memory.
/// Per update: rank 0 writes the weights into its node's memory and sends one copy to each
/// child from there; a leader receives into its node's memory and forwards; every rollout
/// rank then copies the node's weights into its own (as it installs them between decode
/// steps). Rows: the time from rank 0's start to the last rank holding the weights (all ranks
/// run on one machine, so their monotonic clocks agree), rank 0's own publishing time, the
/// bytes rank 0 sent, and the single-rank copy rate of this machine's memory.
func weightSyncBenchmark() throws {
    let world = try MPICollective.initWorld()
    defer { world.finalize() }
    let (node, keys) = try nodeKeys(world)
    let bytes = option("mib", 16) * 1_048_576, reps = option("repeat", 5)
    // Leaders in tree order, as kat-dist builds them.
    var leaders = [0], seen: Set<Int> = [keys[0]]
    for r in 1..<world.size where !seen.contains(keys[r]) { seen.insert(keys[r]); leaders.append(r) }
    let me = leaders.firstIndex(of: world.rank)
    let parent = me.flatMap { $0 > 0 ? leaders[($0 - 1) / 2] : nil }
    let children = me.map { i in [2 * i + 1, 2 * i + 2].filter { $0 < leaders.count }.map { leaders[$0] } } ?? []
    let shared = try node.sharedMemory(bytes: bytes)
    let local = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
    defer { local.deallocate() }
    memset(local, 1, bytes)
    // This machine's copy rate, one rank alone.
    var copyRate = 0.0
    if world.rank == 0 {
        for _ in 0..<3 {
            let t0 = now(); memcpy(shared, local, bytes)
            copyRate = max(copyRate, Double(bytes) / (now() - t0) / 1e9)
        }
    }
    let depth = leaders.count > 0 ? Int(log2(Double(leaders.count))) + 1 : 1
    if world.rank == 0 {
        print("# weight sync: \(world.size) ranks on \(Set(keys).count) node(s), \(leaders.count) leaders (tree depth \(depth)), \(bytes) bytes per update")
        print(String(format: "# memory copy GB/s (one rank) %.2f", copyRate))
        print("update  latency_s  publish_s  root_bytes")
    }
    for v in 1...reps {
        try world.barrier()
        let t0 = monotonicSeconds()
        var publish = 0.0, sent = 0
        if world.rank == 0 {
            memcpy(shared, local, bytes)
            var sends: [MPICollective.PendingRequest] = []
            for c in children { sends += try world.isend(from: shared, bytes: bytes, to: c, tag: 31) }
            sent = children.count * bytes
            publish = monotonicSeconds() - t0
            // Tell the node's other ranks that the slot is written.
            for r in 1..<node.size { try node.send([UInt8(v % 256)], to: r, tag: 32) }
            for s in sends { while try !world.test(s) { usleep(50) } }
        } else if let parent {
            try world.receive(into: shared, bytes: bytes, from: parent, tag: 31)
            var sends: [MPICollective.PendingRequest] = []
            for c in children { sends += try world.isend(from: shared, bytes: bytes, to: c, tag: 31) }
            for r in 0..<node.size where r != node.rank { try node.send([UInt8(v % 256)], to: r, tag: 32) }
            memcpy(local, shared, bytes)
            for s in sends { while try !world.test(s) { usleep(50) } }
        } else {
            // A rollout rank that is not a leader: wait for its node's leader, then copy.
            _ = try receiveAny(node, tag: 32)
            memcpy(local, shared, bytes)
        }
        let done = monotonicSeconds()
        let all = try world.allgather(bytes: withUnsafeBytes(of: done) { Array($0) })
        let last = all.map { $0.withUnsafeBytes { $0.loadUnaligned(as: Double.self) } }.max() ?? done
        if world.rank == 0 { print(String(format: "%d  %.6f  %.6f  %d", v, last - t0, publish, sent)) }
    }
}

/// Receives one message with `tag` from whichever rank of `comm` sends it.
func receiveAny(_ comm: MPICollective, tag: Int) throws -> [UInt8] {
    while true {
        if let m = try comm.probe(source: nil, tag: tag) { return try comm.receive(from: m.source, tag: tag) }
        usleep(20)
    }
}
