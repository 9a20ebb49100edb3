import Foundation
import XCTest
import KATSupport
import KATTestSupport
import KATModel
import KATDist

/// The gradient path at scale: the allreduce overlapped with backward, and optimizer state
/// sharded over trainers, against the plain path.
final class GradientPathTests: TemporaryDirectoryTestCase {
    /// Offline training on a fixed file: every run sees the same batches.
    func offlineArgs(_ run: String, _ extra: [String]) -> [String] {
        [katDist(), "train", "--run-dir", run, "--set", "data.trajectories=\(dir)/data.jsonl", "--set", "advantage.estimator=given",
         "--set", "model.n_positions=64", "--set", "model.n_embd=32", "--set", "model.n_layer=2", "--set", "model.n_head=2",
         "--set", "steps=10", "--set", "batch.trajectories=32", "--set", "deterministic=true", "--set", "optimizer.lr=3e-3",
         "--set", "comm.bucket_mib=0.01", "--set", "optimizer.weight_decay=0.01"] + extra
    }

    func finalWeights(_ run: String) throws -> [Float] {
        let latest = try String(contentsOfFile: run + "/checkpoints/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        return try ModelDirectory.load(run + "/checkpoints/" + latest).params.array
    }

    /// ||a - b|| / ||b|| (Euclidean norms over all parameters).
    func relativeDifference(_ a: [Float], _ b: [Float]) -> Double {
        let diff = zip(a, b).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }
        let norm = b.reduce(0.0) { $0 + Double($1) * Double($1) }
        return (diff / max(norm, 1e-30)).squareRoot()
    }

    /// After 10 steps with 2 and 3 trainers: overlapped buckets give the plain path's weights
    /// bit for bit (the same buckets are summed in the same order, only earlier); sharded
    /// optimizer state gives them within 1e-6 in relative norm: with three trainers a
    /// reduce-scatter adds the trainers' gradients in another order than an allreduce,
    /// which moves the last bit of some sums, and Adam carries that on; with two the sums
    /// are exact, and only the gradient norm's summation over slices differs.
    func testOverlapAndShardingGiveThePlainWeights() throws {
        try writeReversalData(dir + "/data.jsonl", count: 256)
        for t in [2, 3] {
            let plain = dir + "/plain\(t)", overlap = dir + "/overlap\(t)", shard = dir + "/shard\(t)"
            let common = ["--set", "ranks.trainers=\(t)"]
            for (run, extra) in [(plain, ["--set", "comm.overlap=false"]), (overlap, ["--set", "comm.overlap=true"]),
                                 (shard, ["--set", "optimizer.shard=true"])] {
                let r = try mpirun(t, offlineArgs(run, common + extra), timeout: 180)
                XCTAssertEqual(r.code, 0, r.output)
            }
            let w = try finalWeights(plain)
            XCTAssertEqual(try finalWeights(overlap), w, "T=\(t): overlap is bitwise the plain path")
            let d = relativeDifference(try finalWeights(shard), w)
            XCTAssertLessThanOrEqual(d, 1e-6, "T=\(t): sharded differs by \(d)")
            // Per-rank optimizer memory: one T-th of the whole.
            let full = try metrics(plain).last?["optimizer_mib"]?.doubleValue ?? 0
            let part = try metrics(shard).last?["optimizer_mib"]?.doubleValue ?? 0
            XCTAssertEqual(part * Double(t), full, accuracy: full * 0.01, "T=\(t): \(part) MiB of \(full)")
        }
    }

    /// Checkpoints do not depend on the layout: a sharded two-trainer run's checkpoint
    /// holds every parameter's moments (the same as an unsharded run's), and it resumes
    /// unsharded on one trainer and sharded on three.
    func testCheckpointsResumeAcrossShardingAndTrainerCounts() throws {
        try writeReversalData(dir + "/data.jsonl", count: 256)
        let sharded = dir + "/sharded", plain = dir + "/plain"
        XCTAssertEqual(try mpirun(2, offlineArgs(sharded, ["--set", "ranks.trainers=2", "--set", "optimizer.shard=true", "--set", "steps=6"]),
                                  timeout: 180).code, 0)
        XCTAssertEqual(try mpirun(2, offlineArgs(plain, ["--set", "ranks.trainers=2", "--set", "steps=6"]), timeout: 180).code, 0)
        let a = try SafetensorsFile.read(path: sharded + "/checkpoints/step-000006/optimizer.safetensors")
        let b = try SafetensorsFile.read(path: plain + "/checkpoints/step-000006/optimizer.safetensors")
        for name in ["adam.m", "adam.v"] {
            let x = try a.floats(name), y = try b.floats(name)
            XCTAssertEqual(x.count, y.count, name)
            XCTAssertLessThanOrEqual(relativeDifference(x, y), 1e-5, name)
        }
        for (t, shard) in [(1, "false"), (3, "true")] {
            let copy = dir + "/as\(t)"
            try FileManager.default.copyItem(atPath: sharded, toPath: copy)
            let r = try mpirun(t, offlineArgs(copy, ["--set", "ranks.trainers=\(t)", "--set", "optimizer.shard=\(shard)", "--set", "steps=9"]) + ["--resume", "auto"],
                               timeout: 180)
            XCTAssertEqual(r.code, 0, r.output)
            XCTAssertTrue(r.output.contains("resumed at step 6"), r.output)
            XCTAssertEqual(try metrics(copy).last?["step"]?.intValue, 9)
        }
    }
}
