import Foundation
import KATDist
import KATEnv
import KATModel

// kat-dist's command line: parse, validate, dispatch. A usage error is one line on
// stderr and exit code 2; a run-time failure is a message and exit code 1.

// An environment's guardian process (started by kat-dist itself) does nothing else.
if CommandLine.arguments.count > 1, CommandLine.arguments[1] == "env-guardian" {
    EnvironmentGuardian.run(Array(CommandLine.arguments.dropFirst(2)))
}
// First thing: from the first line kat-dist prints, SIGUSR1 asks for a checkpoint and a
// clean stop, and never kills the process.
Preemption.install()
BLASRuntime.reexecWithBetterKernelIfNeeded()


let version = "0.1.0"

let mainUsage = """
kat-dist \(version): reinforcement learning for GPT-2, Llama and Qwen2 language models on trie-packed trajectories

Usage:
  kat-dist train    [--config FILE] [--set key=value ...] [--run-dir DIR] [--resume auto|PATH]
  kat-dist logprobs --model DIR --input FILE.jsonl [--output FILE] [--temperature T]
  kat-dist generate --model DIR --prompt TEXT [--n N] [--temperature T] [--max-new-tokens N]
  kat-dist eval     --model DIR [--task NAME] [--prompts N]
  kat-dist tokenize --model DIR --input FILE.jsonl [--output FILE] [--decode]
  kat-dist --help | --version

Wherever a model directory is expected, a checkpoint's RUN/checkpoints/latest file or a run
directory stand for the newest checkpoint.

Commands:
  train      train a policy: with no options, the built-in default RL run
  logprobs   score every token of each trajectory with a model directory
  generate   sample continuations of a prompt
  eval       held-out success of a model on a built-in task
  tokenize   text to token ids with a model directory's tokenizer, and back

Each command has --help. See README.md and Docs/ for training, formats and tuning.

Environment:
  OPENBLAS_CORETYPE    OpenBLAS kernel to use (default: chosen from the CPU's features when
                       OpenBLAS falls back to a generic kernel)
  KAT_BLAS_AUTO=0      keep OpenBLAS's own kernel choice
  OPENBLAS_NUM_THREADS BLAS threads per process (use 1 per rank when ranks share a node)
"""

/// Prints `message` on standard error and exits with `code`. Under a launcher every rank
/// runs the same command line, so a usage or config error is printed by rank 0 alone
/// (every rank exits with the same code); other failures can be a rank's own (a node's
/// CPU or files), so each rank prints them, with its rank.
func fail(_ message: String, code: Int32, sameOnEveryRank: Bool) -> Never {
    fflush(nil)
    let rank = LaunchEnvironment.worldRank
    if rank == 0 || !sameOnEveryRank {
        let prefix = LaunchEnvironment.worldSize > 1 && !sameOnEveryRank ? "rank \(rank): " : ""
        FileHandle.standardError.write(Data((prefix + message + "\n").utf8))
    }
    exit(code)
}

/// Refuses to compute with a BLAS kernel that gets a small sgemm wrong.
func checkBLAS() throws {
    let err = BLASRuntime.selfCheck()
    if err > BLASRuntime.selfCheckTolerance {
        throw CommandFailure(description: "\(BLASRuntime.summary): a test sgemm is off by \(err) (relative) against a plain loop; set OPENBLAS_CORETYPE to another kernel (for example Haswell) or KAT_BLAS_AUTO=0")
    }
}

let args = Array(CommandLine.arguments.dropFirst())
guard let command = args.first else {
    print(mainUsage)
    exit(0)
}
let rest = Array(args.dropFirst())
do {
    switch command {
    case "--help", "-h", "help":
        print(mainUsage)
    case "--version", "version":
        print("kat-dist \(version)")
        print(BLASRuntime.summary)
        let err = BLASRuntime.selfCheck()
        print(err <= BLASRuntime.selfCheckTolerance
              ? "sgemm check passed (largest relative error \(err) against a plain loop)"
              : "sgemm check FAILED (largest relative error \(err)): this OpenBLAS kernel computes wrong results")
    case "train":
        try checkBLAS()
        try TrainCommand.run(rest)
    case "eval":
        try checkBLAS()
        try EvalCommand.run(rest)
    case "generate":
        try checkBLAS()
        try GenerateCommand.run(rest)
    case "logprobs":
        try checkBLAS()
        try LogprobsCommand.run(rest)
    case "tokenize":
        try TokenizeCommand.run(rest)
    default:
        throw UsageError(description: "kat-dist: unknown command '\(command)' (see kat-dist --help)")
    }
} catch let e as UsageError {
    fail(e.description, code: 2, sameOnEveryRank: true)
} catch let e as CommandFailure {
    fail("kat-dist: " + e.description, code: 1, sameOnEveryRank: false)
} catch {
    fail("kat-dist: \(error)", code: 1, sameOnEveryRank: false)
}
fflush(nil)
exit(0)
