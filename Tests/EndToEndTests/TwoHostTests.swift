import Foundation
import XCTest
import KATSupport
import KATTestSupport

/// Two "hosts" on this machine: network namespaces joined by a veth pair, with mpirun
/// starting the second host's ranks inside its namespace through an rsh agent. Ranks talk
/// over TCP only. Made in setUp and removed in tearDown (root only).
final class TwoHostTests: TemporaryDirectoryTestCase {
    var names: (a: String, b: String) = ("", "")
    var subnet = ""

    override func setUp() {
        super.setUp()
        let tag = String(UUID().uuidString.prefix(6)).lowercased()
        names = ("kat\(tag)a", "kat\(tag)b")
        let octet = Int.random(in: 16...250)
        subnet = "10.213.\(octet)"
    }

    override func tearDown() {
        _ = try? shell("ip netns del \(names.a); ip netns del \(names.b)")
        super.tearDown()
    }

    /// Creates the two namespaces, or skips the test when this process may not.
    func makeHosts(rate: String? = nil) throws {
        let (a, b) = names
        let va = "v\(a.dropFirst(3).prefix(6))x", vb = "v\(b.dropFirst(3).prefix(6))y"
        var script = """
        set -e
        ip netns add \(a); ip netns add \(b)
        ip link add \(va) type veth peer name \(vb)
        ip link set \(va) netns \(a); ip link set \(vb) netns \(b)
        ip netns exec \(a) ip addr add \(subnet).1/24 dev \(va); ip netns exec \(b) ip addr add \(subnet).2/24 dev \(vb)
        ip netns exec \(a) ip link set \(va) up; ip netns exec \(b) ip link set \(vb) up
        ip netns exec \(a) ip link set lo up; ip netns exec \(b) ip link set lo up
        """
        if let rate { script += "\nip netns exec \(a) tc qdisc add dev \(va) root tbf rate \(rate) burst 256kb latency 50ms" }
        let r = try shell(script)
        guard r.code == 0 else {
            _ = try? shell("ip netns del \(a); ip netns del \(b)")
            throw XCTSkip("network namespaces need root and iproute2: \(r.output)")
        }
        let agent = dir + "/agent.sh"
        // Each host also gets its own host name (a UTS namespace): MPI groups ranks into
        // nodes by host, and two hosts with one name would be taken for one node.
        try "#!/bin/sh\n# plm_rsh_agent: HOST COMMAND... runs COMMAND in HOST's network namespace, under host name HOST.\nhost=\"$1\"; shift\nexec ip netns exec \"$host\" unshare --uts sh -c \"hostname $host; $*\"\n"
            .write(toFile: agent, atomically: true, encoding: .utf8)
        chmod(agent, 0o755)
    }

    /// mpirun started in host A's namespace with `slots` ranks there and the rest on host B.
    func twoHostMPIRun(_ np: Int, slotsA: Int, _ args: [String], exports: [String] = [], timeout: TimeInterval = 300) throws -> (code: Int32, output: String) {
        try "localhost slots=\(slotsA)\n\(names.b) slots=\(np - slotsA)\n".write(toFile: dir + "/hosts", atomically: true, encoding: .utf8)
        let mpi = ["ip", "netns", "exec", names.a, "mpirun", "--hostfile", dir + "/hosts", "-np", "\(np)",
                   "--mca", "plm_rsh_agent", dir + "/agent.sh", "--mca", "btl", "tcp,self",
                   "--mca", "btl_tcp_if_include", "\(subnet).0/24", "--mca", "oob_tcp_if_include", "\(subnet).0/24",
                   "--mca", "mpi_yield_when_idle", "1", "-x", "OPENBLAS_NUM_THREADS=1",
                   "-x", "OMPI_ALLOW_RUN_AS_ROOT=1", "-x", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"] + exports.flatMap { ["-x", $0] } + args
        let quoted = mpi.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        return try shell("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " + quoted, timeout: timeout)
    }

    /// The trainer on host A, two rollout ranks on host B: new weights cross to B once per
    /// update (to B's leader, which shares them with the other rank through B's memory),
    /// the rollout ranks' groups are trained with advancing versions, and the job ends
    /// cleanly.
    func testTrainerAndRolloutRanksOnTwoHosts() throws {
        try makeHosts()
        let run = dir + "/run"
        let r = try twoHostMPIRun(3, slotsA: 1, [katDist(), "train", "--run-dir", run, "--set", "ranks.trainers=1", "--set", "ranks.multiplex=false",
                                                 "--set", "model.n_embd=32", "--set", "model.n_layer=1", "--set", "model.n_head=2",
                                                 "--set", "warmstart.steps=2", "--set", "warmstart.batch=8", "--set", "batch.prompts=2",
                                                 "--set", "rollout.group_size=4", "--set", "eval.every=0", "--set", "steps=8",
                                                 "--set", "log.trained_ids=true"])
        XCTAssertEqual(r.code, 0, r.output)
        let rl = try metrics(run).filter { $0["phase"] == .string("rl") }
        XCTAssertEqual(rl.count, 8, r.output)
        // One message of the model's size per update to host B (a 64-byte header and the
        // parameters): B's two ranks share it through B's memory.
        let oneCopy = 64 + 4 * (try parameterCount(run + "/checkpoints/" + latestCheckpoint(run) + "/model.safetensors"))
        let bytes = rl.compactMap { $0["weight_bytes_root"]?.intValue }
        XCTAssertEqual(bytes, [Int](repeating: oneCopy, count: rl.count), "one copy per update to host B")
        // Groups came from both rollout ranks (ids name their rank), sampled with weights
        // that kept arriving: the trained versions advance.
        let ids = try String(contentsOfFile: run + "/trained_ids.jsonl", encoding: .utf8)
        XCTAssertTrue(ids.contains("-r1-") && ids.contains("-r2-"), ids)
        let lastLag = rl.last?["staleness_max"]?.intValue ?? 99
        XCTAssertLessThanOrEqual(lastLag, 4, "the rollout ranks on host B sample recent versions")
    }

    /// Over a link slower than a training step (20 Mbit/s for a 1.8 MB model: about 0.75 s
    /// a weights message), host B's leader keeps decoding while a message arrives, with
    /// partial rollouts and without: MPI moves a message only inside MPI calls, and a
    /// receive that waited for all of it would hold the leader for most of every step.
    /// Checked on the leader's weight trace: decode steps between "receiving" and "received".
    func testLeaderDecodesWhileWeightsArrive() throws {
        try makeHosts(rate: "20mbit")
        for partial in [true, false] {
            let run = dir + "/run-\(partial)", trace = dir + "/trace-\(partial)"
            try FileManager.default.createDirectory(atPath: trace, withIntermediateDirectories: true)
            let r = try twoHostMPIRun(3, slotsA: 1, [katDist(), "train", "--run-dir", run, "--set", "ranks.trainers=1", "--set", "ranks.multiplex=false",
                                                     "--set", "model.n_embd=128", "--set", "model.n_layer=2", "--set", "model.n_head=2",
                                                     "--set", "warmstart.steps=1", "--set", "warmstart.batch=8", "--set", "eval.every=0",
                                                     "--set", "steps=6", "--set", "rollout.partial=\(partial)"],
                                      exports: ["KAT_TRACE_WEIGHTS=" + trace], timeout: 240)
            XCTAssertEqual(r.code, 0, r.output)
            // Rank 1 is host B's leader (its lowest rollout rank); rank 2 reads B's memory.
            let lines = try String(contentsOfFile: trace + "/rank-1.jsonl", encoding: .utf8).split(separator: "\n").map { try JSON.parse(String($0)) }
            var receiving = false, received = 0, stepsWhileReceiving = 0
            for l in lines {
                if l["receiving"] != nil { receiving = true }
                if l["received"] != nil { receiving = false; received += 1 }
                if l["step"] != nil, receiving { stepsWhileReceiving += 1 }
            }
            XCTAssertGreaterThanOrEqual(received, 3, "partial \(partial): the leader received weights messages")
            XCTAssertGreaterThan(stepsWhileReceiving, 0, "partial \(partial): the leader decoded while weights arrived")
        }
    }

    func latestCheckpoint(_ run: String) throws -> String {
        try String(contentsOfFile: run + "/checkpoints/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Elements of every tensor of a safetensors file (from its JSON header).
    func parameterCount(_ path: String) throws -> Int {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let n = data.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        let header = try JSON.parse(String(decoding: data[8..<(8 + n)], as: UTF8.self))
        var total = 0
        for (name, t) in header.objectMembers ?? [] where name != "__metadata__" {
            total += (t["shape"]?.arrayValue ?? []).compactMap(\.intValue).reduce(1, *)
        }
        return total
    }
}
