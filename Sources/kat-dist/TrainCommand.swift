import Foundation
import KATDist
import KATModel

/// `kat-dist train`: parse and validate, then hand the run to the runtime.
enum TrainCommand {
    static let usage = """
    Usage: kat-dist train [--config FILE] [--set key=value ...] [--run-dir DIR] [--resume auto|PATH]
                          [--progress auto|bar|lines|off] [--progress-every S] [--keys] [--check [--ranks N]]

    Trains a policy. With no config, runs the built-in default: reinforcement learning on
    the code task (write a stack-language program for a function described in words), after
    a short supervised warm start, evaluated on held-out prompts.
    data.task=NAME picks a built-in task (code, arithmetic, explore); data.env_command=CMD an external
    environment (JSON lines, see Docs/formats.md); data.trajectories=FILE trains offline on
    that JSONL file. Batches are packed into a trie (data.packing=trie) or flat.
    Under mpirun, ranks.trainers ranks train and the others generate rollouts.
    Writes RUN/config.json, the metrics (RUN/metrics.jsonl, one line per step, and the same
    as RUN/metrics.csv and a TensorBoard event file), RUN/report.html and checkpoints under
    RUN/checkpoints (every checkpoint.every steps and at the end). See Docs/metrics.md.

    Options:
      --config FILE      JSON config of nested objects (see kat-dist train --keys)
      --set key=value    override one dotted key; repeatable (value read as JSON, else text)
      --run-dir DIR      run directory (default runs/<UTC timestamp>); never overwritten
      --resume auto|PATH continue the run in --run-dir from its newest checkpoint that verifies,
                         or from the checkpoint at PATH
      --keys             list every config key with its default, allowed values and meaning, and exit
      --check            check the command line, the config and the files it names (the data,
                         model.init, the environment command, the checkpoint to resume) on this
                         machine, then exit: 0 when the run would start; launch scripts run it
                         before mpirun, and under mpirun it checks every node's storage
      --ranks N          the number of ranks to check the layout for (default: the launcher's, 1)
    \(ProgressDisplay.help(column: 21))
    """

    static func run(_ args: [String]) throws {
        let specs = [OptionSpec(name: "config", takesValue: true), OptionSpec(name: "set", takesValue: true, repeatable: true),
                     OptionSpec(name: "run-dir", takesValue: true), OptionSpec(name: "resume", takesValue: true),
                     OptionSpec(name: "keys", takesValue: false), OptionSpec(name: "check", takesValue: false),
                     OptionSpec(name: "ranks", takesValue: true)] + ProgressDisplay.options
        let a = try ParsedArguments.parse(args, specs: specs, command: "train")
        if a.has("help") { print(usage); return }
        if a.has("keys") {
            print(keysTable())
            return
        }
        var config = TrainConfig()
        do {
            if let path = a.value("config") {
                guard FileManager.default.fileExists(atPath: path) else {
                    throw UsageError(description: "kat-dist train: --config \(path): no such file")
                }
                config = try TrainConfig.load(path: path)
            }
            for o in a.all("set") { try config.apply(override: o) }
            try config.validate(source: a.value("config") ?? "config")
        } catch let e as ConfigError {
            throw UsageError(description: "kat-dist train: \(e)")
        }
        if let r = a.value("run-dir"), r.trimmingCharacters(in: .whitespaces).isEmpty {
            throw UsageError(description: "kat-dist train: --run-dir: empty; give a directory")
        }
        let resume = a.value("resume")
        if let r = resume, r != "auto", !FileManager.default.fileExists(atPath: r) {
            throw UsageError(description: "kat-dist train: --resume \(r): no such checkpoint (give auto or a checkpoint directory)")
        }
        if resume != nil, a.value("run-dir") == nil {
            throw UsageError(description: "kat-dist train: --resume needs --run-dir (the run to continue)")
        }
        var settings = RunSettings(config)
        // Environment processes run under this executable's guardian mode.
        if let me = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            settings.environmentGuardian = [me, "env-guardian"]
        }
        let worldSize = try a.int("ranks", command: "train", range: 1...1_000_000) ?? LaunchEnvironment.worldSize
        // Under a launcher every rank checks the files apart, once MPI runs, so that a file
        // missing from one node's storage is named with that node.
        do { try Training.check(settings, worldSize: worldSize, files: !LaunchEnvironment.launchedByMPI) } catch {
            throw UsageError(description: "kat-dist train: \(error)")
        }
        if a.has("check") {
            // Each process checks the files on its own machine: under mpirun with one rank
            // per node, every node reports (a fault names the rank; Docs/cluster.md).
            let host = ProcessInfo.processInfo.hostName
            do { try Training.checkFilesForLaunch(settings, runDirectory: a.value("run-dir"), resume: resume) } catch {
                throw CommandFailure(description: "train --check on \(host): \(error)")
            }
            let layout = try? Training.layout(settings, worldSize: worldSize)
            print("kat-dist train: the command line and config are valid for \(worldSize) rank\(worldSize == 1 ? "" : "s")"
                  + (layout.map { " (\($0.trainers) trainer, \($0.rollouts) rollout)" } ?? "") + "; the files they name are on \(host)")
            return
        }
        let runDir = a.value("run-dir") ?? RunDirectory.defaultPath()
        if LaunchEnvironment.worldRank == 0 {
            if settings.watchdog < 30, LaunchEnvironment.launchedByMPI {
                print("kat-dist train: watchdog_s = \(settings.watchdog) is shorter than a checkpoint write or a model load may take; a healthy rank may be ended")
            }
            print("kat-dist train: run directory \(runDir)")
            print(BLASRuntime.summary)
        }
        fflush(nil)
        let display = try ProgressDisplay(a, command: "train")
        defer { display.finish() }
        let code: Int32
        do { code = try Training.run(settings, runDirectory: runDir, resume: resume, console: display) } catch let e as RunError {
            // Settings in conflict with the model or the task are usage errors.
            if case .settings = e { throw UsageError(description: "kat-dist train: \(e)") }
            throw CommandFailure(description: "\(e)")
        } catch {
            throw CommandFailure(description: "\(error)")
        }
        if code != 0 { display.finish(); exit(code) }
    }
}

/// Every config key with its default, the values it takes and its meaning, in columns.
func keysTable() -> String {
    let rows = [("key", "default", "allowed", "meaning")] + TrainConfig.keys.map { ($0.name, $0.defaultValue.serialized, $0.kind.allowed, $0.help) }
    let w0 = rows.map(\.0.count).max() ?? 0, w1 = rows.map(\.1.count).max() ?? 0, w2 = rows.map(\.2.count).max() ?? 0
    func pad(_ s: String, _ w: Int) -> String { s + String(repeating: " ", count: max(0, w - s.count)) }
    return rows.map { pad($0.0, w0) + "  " + pad($0.1, w1) + "  " + pad($0.2, w2) + "  " + $0.3 }.joined(separator: "\n")
}
