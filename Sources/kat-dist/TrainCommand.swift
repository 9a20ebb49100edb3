import Foundation
import KATDist
import KATModel

/// `kat-dist train`: parse and validate, then hand the run to the runtime.
enum TrainCommand {
    static let usage = """
    Usage: kat-dist train [--config FILE] [--set key=value ...] [--run-dir DIR] [--resume auto|PATH]

    Trains a policy. With no config, runs the built-in default: reinforcement learning on
    the code task (write a stack-language program for a function described in words), after
    a short supervised warm start, evaluated on held-out prompts.
    data.task=NAME picks a built-in task (code, arithmetic, explore); data.env_command=CMD an external
    environment (JSON lines, see Docs/formats.md); data.trajectories=FILE trains offline on
    that JSONL file. Batches are packed into a trie (data.packing=trie) or flat.
    Under mpirun, ranks.trainers ranks train and the others generate rollouts.
    Writes RUN/config.json, RUN/metrics.jsonl (one line per step), RUN/report.html and
    checkpoints under RUN/checkpoints (every checkpoint.every steps and at the end).

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
        var settings = RunSettings(config)
        // Environment processes run under this executable's guardian mode.
        if let me = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            settings.environmentGuardian = [me, "env-guardian"]
        }
        do { try Training.check(settings, worldSize: LaunchEnvironment.worldSize) } catch {
            throw UsageError(description: "kat-dist train: \(error)")
        }
        let runDir = a.value("run-dir") ?? RunDirectory.defaultPath()
        if LaunchEnvironment.worldRank == 0 {
            print("kat-dist train: run directory \(runDir)")
            print(BLASRuntime.summary)
        }
        fflush(nil)
        let display = ProgressDisplay()
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

/// Progress on a terminal: one status line rewritten in place; elsewhere, plain lines.
final class ProgressDisplay: Console {
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
