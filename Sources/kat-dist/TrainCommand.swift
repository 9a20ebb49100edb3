import Foundation
import KATModel
import KATRL
import KATTrie
import KATDist

/// `kat-dist train`: offline training on a trajectories file (in one process for now).
enum TrainCommand {
    static let usage = """
    Usage: kat-dist train [--config FILE] [--set key=value ...] [--run-dir DIR] [--resume auto|PATH]

    Trains a GPT-2 policy. With no config, runs the built-in default: reinforcement learning
    on the code task (write a stack-language program for a function described in words),
    after a short supervised warm start, evaluated on held-out prompts.
    data.task=NAME picks a built-in task (code, arithmetic); data.env_command=CMD an external
    environment (JSON lines, SPEC section 11); data.trajectories=FILE trains offline on that
    JSONL file (SPEC section 4). Batches are packed into a trie (data.packing=trie) or flat.
    Writes RUN/config.json, RUN/metrics.jsonl (one line per step) and checkpoints under
    RUN/checkpoints (every checkpoint.every steps and at the end).

    Options:
      --config FILE      JSON config of nested objects (see kat-dist train --keys)
      --set key=value    override one dotted key; repeatable (value read as JSON, else text)
      --run-dir DIR      run directory (default runs/<UTC timestamp>); never overwritten
      --resume auto|PATH continue the run in --run-dir from its newest checkpoint that verifies,
                         or from the checkpoint at PATH
      --keys             list every config key with its default and exit
    """

    static func run(_ args: [String]) throws {
        let specs = [OptionSpec(name: "config", takesValue: true), OptionSpec(name: "set", takesValue: true, repeatable: true),
                     OptionSpec(name: "run-dir", takesValue: true), OptionSpec(name: "resume", takesValue: true),
                     OptionSpec(name: "keys", takesValue: false)]
        let a = try ParsedArguments.parse(args, specs: specs, command: "train")
        if a.has("help") { print(usage); return }
        if a.has("keys") {
            for k in TrainConfig.keys { print("\(k.name) = \(k.defaultValue.serialized)    \(k.help)") }
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
        let resume = a.value("resume")
        if let r = resume, r != "auto", !FileManager.default.fileExists(atPath: r) {
            throw UsageError(description: "kat-dist train: --resume \(r): no such checkpoint (give auto or a checkpoint directory)")
        }
        if resume != nil, a.value("run-dir") == nil {
            throw UsageError(description: "kat-dist train: --resume needs --run-dir (the run to continue)")
        }
        installPreemptionHandler()
        if case let .task(name) = config.dataSource, builtinTask(name) == nil {
            throw UsageError(description: "kat-dist train: data.task \"\(name)\" is not a built-in task (\(builtinTaskNames.joined(separator: ", ")))")
        }
        if let path = config.string("data.trajectories"), !FileManager.default.fileExists(atPath: path) {
            throw UsageError(description: "kat-dist train: data.trajectories \(path): no such file")
        }
        if let dir = config.string("model.init"), !FileManager.default.fileExists(atPath: dir) {
            throw UsageError(description: "kat-dist train: model.init \(dir): no such directory")
        }
        if let ws = ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_SIZE"].flatMap(Int.init) {
            let t = config.int("ranks.trainers"), r = config.optionalInt("ranks.rollouts") ?? (ws - t)
            if t + r != ws || r < 0 {
                throw UsageError(description: "kat-dist train: ranks.trainers (\(t)) + ranks.rollouts (\(r)) must equal the number of MPI ranks (\(ws))")
            }
        }
        let runDir = a.value("run-dir") ?? RunDirectory.defaultPath()
        let rank = ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_RANK"] ?? "0"
        if rank == "0" {
            print("kat-dist train: run directory \(runDir)")
            print(BLASRuntime.summary)
        }
        fflush(nil)
        let display = ProgressDisplay()
        if Communicator.launchedByMPI {
            let code = DistributedTraining.run(config: config, runDirectory: runDir, resume: resume, log: { display.line($0) },
                                               progress: { display.status($0) })
            display.finish()
            if code != 0 { exit(code) }
            return
        }
        do {
            if config.string("data.trajectories") != nil {
                let trainer = try OfflineRun(config: config, runDirectory: runDir, resume: resume) { display.line($0) }
                try trainer.train()
            } else {
                let trainer = try OnlineRun(config: config, runDirectory: runDir, resume: resume, log: { display.line($0) },
                                            progress: { display.status($0) })
                try trainer.train()
            }
            display.finish()
        } catch {
            display.finish()
            throw CommandFailure(description: "\(error)")
        }
    }
}

/// Progress on a terminal: one status line rewritten in place; elsewhere, plain lines.
final class ProgressDisplay {
    let tty = isatty(1) != 0
    var statusShown = false

    func line(_ s: String) {
        if statusShown { print("\r\u{1B}[K", terminator: ""); statusShown = false }
        print(s)
        fflush(nil)
    }

    func status(_ s: String) {
        if tty {
            print("\r\u{1B}[K" + s, terminator: "")
            statusShown = true
        } else {
            print(s)
        }
        fflush(nil)
    }

    func finish() {
        if statusShown { print(""); statusShown = false }
        fflush(nil)
    }
}
