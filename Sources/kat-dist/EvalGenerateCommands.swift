import Foundation
import KATModel
import KATEnv
import KATRL
import KATDist

/// The model of `--model DIR`: a model directory, a checkpoint's `latest` file
/// (RUN/checkpoints/latest) or a run directory (its newest checkpoint).
func loadModelOption(_ a: ParsedArguments, command: String) throws -> any LanguageModel {
    let given = try a.required("model", command: command)
    guard FileManager.default.fileExists(atPath: given) else {
        throw UsageError(description: "kat-dist \(command): --model \(given): no such directory")
    }
    do { return try ModelDirectory.load(Checkpoint.resolveModelDirectory(given)) } catch { throw CommandFailure(description: "\(error)") }
}

/// Checks `--output FILE` before any work: its directory exists and takes new files, and
/// the path is not a directory. nil when the option is absent (standard output).
func checkedOutputOption(_ a: ParsedArguments, command: String) throws -> String? {
    guard let path = a.value("output") else { return nil }
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
        throw UsageError(description: "kat-dist \(command): --output \(path): is a directory")
    }
    let parent = (path as NSString).deletingLastPathComponent
    let dir = parent.isEmpty ? "." : parent
    guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
        throw UsageError(description: "kat-dist \(command): --output \(path): no such directory \(dir)")
    }
    guard FileManager.default.isWritableFile(atPath: dir) else {
        throw UsageError(description: "kat-dist \(command): --output \(path): the directory \(dir) is not writable")
    }
    return path
}

/// The tokenizer of the model directory `--model` names, checked against the model's
/// vocabulary and able to frame episodes (an EOS and a separator).
func loadTokenizerOption(_ a: ParsedArguments, model: any LanguageModel, command: String) throws -> any Tokenizer {
    let given = try a.required("model", command: command)
    let dir: String
    do { dir = try Checkpoint.resolveModelDirectory(given) } catch { throw CommandFailure(description: "\(error)") }
    do {
        let t = try TokenizerLoader.load(directory: dir)
        try t.check(fitsVocabularySize: model.config.vocabSize, model: "the model \(dir)")
        try t.checkEpisodeSpecials()
        return t
    } catch { throw CommandFailure(description: "\(error)") }
}

/// `kat-dist eval`: held-out success (full reward under greedy decoding) and mean reward.
enum EvalCommand {
    static let usage = """
    Usage: kat-dist eval --model DIR [--task NAME] [--prompts N] [--turns N] [--max-new-tokens N] [--progress MODE]

    Runs the model greedily on the first N held-out prompts of a built-in task and prints
    the share solved (full reward) and the mean reward.

    Options:
      --model DIR          model directory (a checkpoint, RUN/checkpoints/latest or a run
                           directory work too)
      --task NAME          built-in task: \(builtinTaskNames.joined(separator: ", ")) (default code)
      --prompts N          held-out prompts (default 200)
      --turns N            turns per episode (default 1)
      --max-new-tokens N   tokens per answer (default 16)
    \(ProgressDisplay.help(column: 23))
    Progress goes to standard error; the result to standard output.
    """

    static func run(_ args: [String]) throws {
        let a = try ParsedArguments.parse(args, specs: [OptionSpec(name: "model", takesValue: true), OptionSpec(name: "task", takesValue: true),
                                                        OptionSpec(name: "prompts", takesValue: true), OptionSpec(name: "turns", takesValue: true),
                                                        OptionSpec(name: "max-new-tokens", takesValue: true)] + ProgressDisplay.options,
                                          command: "eval")
        if a.has("help") { print(usage); return }
        let name = a.value("task") ?? "code"
        guard let task = builtinTask(name) else {
            throw UsageError(description: "kat-dist eval: --task \(name) is not a built-in task (\(builtinTaskNames.joined(separator: ", ")))")
        }
        let prompts = try a.int("prompts", command: "eval", range: 1...task.promptCount(split: "test")) ?? min(200, task.promptCount(split: "test"))
        let turns = try a.int("turns", command: "eval", range: 1...100) ?? 1
        let maxNew = try a.int("max-new-tokens", command: "eval", range: 1...100_000) ?? 16
        let model = try loadModelOption(a, command: "eval")
        let tokenizer = try loadTokenizerOption(a, model: model, command: "eval")
        guard maxNew * turns < model.config.nPositions else {
            throw UsageError(description: "kat-dist eval: --max-new-tokens (\(maxNew)) x --turns (\(turns)) leaves no room for a prompt in the model's n_positions (\(model.config.nPositions))")
        }
        var rc = RolloutConfig()
        rc.turns = turns; rc.maxNewTokens = maxNew
        let worker = RolloutWorker(model: model, seed: 1, config: rc, tokenizer: tokenizer) { task.makeEnvironment(maxTurns: turns) }
        let (ok, total) = try evaluateWithProgress(worker, prompts: prompts, display: try ProgressDisplay(a, command: "eval", fd: 2))
        print(String(format: "task %@: held-out success %.3f (%d of %d), mean reward %.3f", name as NSString,
                     Double(ok) / Double(prompts), ok, prompts, total / Double(prompts)))
    }
}

/// `kat-dist generate`: decoded samples for a prompt.
enum GenerateCommand {
    static let usage = """
    Usage: kat-dist generate --model DIR --prompt TEXT [--n N] [--temperature T] [--max-new-tokens N] [--seed S]

    Samples N continuations of the prompt (BOS, its tokens, the separator, with the model
    directory's tokenizer) and prints each, one per line, without its final EOS or
    separator and without special tokens. --temperature 0 decodes greedily.

    Options:
      --model DIR          model directory (a checkpoint, RUN/checkpoints/latest or a run
                           directory work too)
      --prompt TEXT        the prompt, as text
      --n N                samples (default 1)
      --temperature T      sampling temperature, 0 = greedy (default 1)
      --max-new-tokens N   tokens per sample at most (default 32); a sample also ends at
                           EOS or the separator
      --seed S             random seed of the samples (default 1)
    """

    static func run(_ args: [String]) throws {
        let a = try ParsedArguments.parse(args, specs: [OptionSpec(name: "model", takesValue: true), OptionSpec(name: "prompt", takesValue: true),
                                                        OptionSpec(name: "n", takesValue: true), OptionSpec(name: "temperature", takesValue: true),
                                                        OptionSpec(name: "max-new-tokens", takesValue: true), OptionSpec(name: "seed", takesValue: true)],
                                          command: "generate")
        if a.has("help") { print(usage); return }
        let prompt = try a.required("prompt", command: "generate")
        let n = try a.int("n", command: "generate", range: 1...10_000) ?? 1
        let tau = try a.double("temperature", command: "generate", range: 0...1e6) ?? 1
        let maxNew = try a.int("max-new-tokens", command: "generate", range: 1...100_000) ?? 32
        let seed = try a.int("seed", command: "generate", range: 0...Int(Int32.max)) ?? 1
        let model = try loadModelOption(a, command: "generate")
        let tokenizer = try loadTokenizerOption(a, model: model, command: "generate")
        let tokens = tokenizer.promptTokens(prompt)
        guard tokens.count + maxNew <= model.config.nPositions else {
            throw UsageError(description: "kat-dist generate: the prompt (\(tokens.count) tokens) plus --max-new-tokens exceed the model's n_positions (\(model.config.nPositions))")
        }
        let sampler = Sampler(model: model, seed: UInt64(seed))
        var cfg = SamplingConfig()
        cfg.temperature = tau > 0 ? Float(tau) : 1
        cfg.greedy = tau == 0
        cfg.maxNewTokens = maxNew
        cfg.stopTokens = tokenizer.stopTokens
        do {
            let (row, logits) = try sampler.prefill(tokens)
            for c in try sampler.generate(from: row, logits: logits, streams: n, config: cfg) {
                print(tokenizer.actionText(c.tokens.map(\.token)))
            }
        } catch { throw CommandFailure(description: "\(error)") }
    }
}
