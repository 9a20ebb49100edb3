import Foundation
import KATEnv
import KATModel
import KATRL
import KATSupport
import KATTrie

/// Where a run's data comes from.
public enum DataSource: Equatable, Sendable {
    /// A trajectories JSONL file, trained offline.
    case trajectories(String)
    /// An external environment command (JSON lines over stdin/stdout).
    case external(String)
    /// A built-in task by name.
    case task(String)

    public var isOnline: Bool { if case .trajectories = self { return false } else { return true } }
}

/// The run as a whole: length, seed, checkpoints, evaluation, checks.
public struct RunOptions: Sendable, Equatable {
    /// RL or offline optimizer steps (warm-start steps are counted apart).
    public var steps = 200
    public var seed = 1
    public var deterministic = false
    /// Checkpoint every N steps of a phase (0: only the final one).
    public var checkpointEvery = 0
    public var checkpointKeep = 3
    /// Element type of the weights in checkpoints (F32 or BF16); optimizer state stays F32.
    public var checkpointDType: SafetensorsDType = .F32
    /// Trie-vs-flat drift check every N steps (0: never).
    public var flatCheckEvery = 0
    /// Evaluate every N RL steps (0: never).
    public var evalEvery = 25
    public var evalPrompts = 200
    /// Evaluation also samples rollout.group_size answers per held-out prompt (pass@1, pass@k).
    public var evalPassAtK = true
    /// Write RUN/trained_ids.jsonl.
    public var logTrainedIDs = false
    public init() {}
}

/// The supervised warm start on a built-in task's reference answers.
public struct WarmStartConfig: Sendable, Equatable {
    public var steps = 400
    public var batch = 64
    /// Constant learning rate of the warm start.
    public var lr: Float = 1e-3
    /// Share of demonstrations that are flawed (a weaker teacher's).
    public var flawed = 0.6
    public init() {}
}

/// How trainers sum gradients and keep optimizer state.
public struct CommConfig: Sendable, Equatable {
    /// Start summing each bucket of the gradient as soon as backward has filled it.
    public var overlap = true
    /// Size of a gradient bucket, MiB.
    public var bucketMiB = 4.0
    /// Shard the optimizer state over trainers (reduce-scatter, slice update, allgather).
    public var shardOptimizer = false
    public init() {}
}

/// How ranks are split and how asynchronous data may lag.
public struct RanksConfig: Sendable, Equatable {
    public var trainers = 1
    /// Rollout ranks; nil: every rank that does not train.
    public var rollouts: Int?
    /// Largest policy lag a trained trajectory may have.
    public var maxStaleness = 4
    /// Groups the trainers buffer before rollout ranks are pushed back.
    public var bufferGroups = 16
    /// Trainers generate rollouts themselves when they would wait for data.
    public var multiplex = true
    /// Rollout ranks start a group only within the staleness budget (admission control);
    /// false: they generate freely and groups that become stale are dropped.
    public var admission = true
    public init() {}
}

/// The model a run starts from: a directory, or a random initialisation of a shape (of
/// any family).
public enum ModelSource: Sendable {
    case directory(String)
    case random(any ModelConfiguration)
}

/// Every setting of a run, read once from the config into a typed value per concern.
public struct RunSettings: Sendable {
    public var run = RunOptions()
    public var model: ModelSource = .random(GPT2Config(vocabSize: 260, nPositions: 128, nEmbd: 128, nLayer: 4, nHead: 4))
    public var optimizer = OptimizerConfig()
    public var step = StepConfig()
    public var loss = PolicyLossConfig()
    public var advantage = AdvantageConfig()
    public var rollout = RolloutConfig()
    public var warmStart = WarmStartConfig()
    public var ranks = RanksConfig()
    public var comm = CommConfig()

    /// Steps a group may wait after its weights were published and still be trained:
    /// max_staleness / updates per step (minibatches x PPO epochs), rounded down.
    public var stepsAhead: Int { ranks.maxStaleness / max(1, step.minibatches * step.ppoEpochs) }

    /// Whether trainers multiplex in a run with rollout ranks: `ranks.multiplex`, unless a
    /// group can wait fewer than two steps (`stepsAhead` below 2). Admission control lets
    /// rollout ranks start groups for the next `stepsAhead` + 1 batches; groups the
    /// trainers make meanwhile take batch places and push those back a step, which is
    /// harmless only while a group can still wait one step more.
    public var trainersMultiplex: Bool { ranks.multiplex && stepsAhead >= 2 }

    /// Why `ranks.multiplex` is on but trainers do not multiplex, or nil.
    public var multiplexOffReason: String? {
        guard ranks.multiplex, stepsAhead < 2 else { return nil }
        let u = max(1, step.minibatches * step.ppoEpochs)
        return "multiplexing is off in this run: max_staleness (\(ranks.maxStaleness)) is below twice the updates per step "
            + "(batch.minibatches x loss.ppo_epochs = \(u)), so a group can wait fewer than two steps, and groups the trainers made "
            + "themselves would push the rollout ranks' groups back until they go stale; set max_staleness to at least \(2 * u) to multiplex"
    }
    public var data: DataSource = .task("code")
    /// Why warm-start keys the config gives explicitly are not used (no built-in task to
    /// demonstrate), or nil; said at start.
    public var warmStartUnused: String?
    /// Whether offline groups are shuffled each epoch after the first.
    public var shuffle = true
    /// Offline: trajectories per step.
    public var offlineBatch = 64
    /// Online: prompts (groups) per step.
    public var prompts = 16
    /// Seconds an external environment may take to reply.
    public var envTimeout = 10.0
    /// External environment processes per rank, each living for the whole run.
    public var envWorkers = 1
    /// Seconds a rank may stay silent before the job ends naming it.
    public var watchdog = 300.0
    /// The command line of kat-dist's environment guardian (`kat-dist env-guardian`),
    /// which ends an environment's descendants even when kat-dist dies; set by the
    /// command line, nil elsewhere (the process group alone is then ended).
    public var environmentGuardian: [String]?
    /// The resolved config as nested JSON (what RUN/config.json records).
    public var json: JSON = .object([])

    public init() {}

    /// Reads every concern out of a validated config.
    public init(_ c: TrainConfig) {
        run.steps = c.int("steps")
        run.seed = c.int("seed")
        run.deterministic = c.bool("deterministic")
        run.checkpointEvery = c.int("checkpoint.every")
        run.checkpointKeep = c.int("checkpoint.keep")
        run.checkpointDType = c.string("checkpoint.dtype") == "bf16" ? .BF16 : .F32
        run.flatCheckEvery = c.int("check.flat_every")
        run.evalEvery = c.int("eval.every")
        run.evalPrompts = c.int("eval.prompts")
        run.evalPassAtK = c.bool("eval.pass_at_k")
        run.logTrainedIDs = c.bool("log.trained_ids")

        if let dir = c.string("model.init") {
            model = .directory(dir)
        } else {
            let family = ModelFamily(rawValue: c.string("model.family") ?? "gpt2") ?? .gpt2
            if family == .gpt2 {
                model = .random(GPT2Config(vocabSize: c.int("model.vocab_size"), nPositions: c.int("model.n_positions"),
                                           nEmbd: c.int("model.n_embd"), nLayer: c.int("model.n_layer"), nHead: c.int("model.n_head")))
            } else {
                model = .random(LlamaConfig(family: family, vocabSize: c.int("model.vocab_size"), nPositions: c.int("model.n_positions"),
                                            nEmbd: c.int("model.n_embd"), nLayer: c.int("model.n_layer"), nHead: c.int("model.n_head"),
                                            nKVHead: c.optionalInt("model.n_kv_head"), intermediateSize: c.optionalInt("model.intermediate_size"),
                                            ropeTheta: c.double("model.rope_theta"), rmsNormEps: c.double("model.rms_norm_eps"),
                                            tieWordEmbeddings: c.bool("model.tie_word_embeddings")))
            }
        }

        optimizer.kind = OptimizerConfig.Kind(rawValue: c.string("optimizer.name") ?? "adamw") ?? .adamw
        optimizer.lr = Float(c.double("optimizer.lr"))
        let betas = c.doubleList("optimizer.betas")
        if betas.count == 2 { optimizer.beta1 = Float(betas[0]); optimizer.beta2 = Float(betas[1]) }
        optimizer.eps = Float(c.double("optimizer.eps"))
        optimizer.weightDecay = Float(c.double("optimizer.weight_decay"))
        optimizer.gradClip = Float(c.double("optimizer.grad_clip"))
        optimizer.schedule = OptimizerConfig.Schedule(rawValue: c.string("optimizer.schedule") ?? "cosine") ?? .cosine
        optimizer.warmupSteps = c.int("optimizer.warmup_steps")

        step.packing = StepConfig.Packing(rawValue: c.string("data.packing") ?? "trie") ?? .trie
        step.maxTokens = c.int("batch.max_tokens")
        step.temperature = Float(c.double("rollout.temperature"))
        step.minibatches = c.int("batch.minibatches")
        step.ppoEpochs = c.int("loss.ppo_epochs")

        loss = PolicyLossConfig(mode: LossMode(rawValue: c.string("loss.mode") ?? "token-mean") ?? .tokenMean,
                                epsLow: c.double("loss.eps_low"), epsHigh: c.double("loss.eps_high"), klCoef: c.double("loss.kl_coef"),
                                offPolicy: PolicyLossConfig.OffPolicy(rawValue: c.string("loss.off_policy") ?? "ppo") ?? .ppo,
                                isCap: c.double("loss.is_cap"),
                                entropyBonusBeta: c.double("advantage.entropy_bonus_beta"),
                                entropyBonusKappa: c.double("advantage.entropy_bonus_kappa"),
                                entropyTokenFrac: c.double("loss.entropy_token_frac"),
                                klCovFrac: c.double("loss.kl_cov_frac"), klCovCoef: c.double("loss.kl_cov_coef"))

        advantage = AdvantageConfig(estimator: AdvantageConfig.Estimator(rawValue: c.string("advantage.estimator") ?? "grpo") ?? .grpo,
                                    normalizeStd: c.bool("advantage.normalize_std"), entropyScaling: c.bool("advantage.entropy_scaling"),
                                    alpha: c.double("advantage.entropy_alpha"), scaleMin: c.double("advantage.entropy_min"),
                                    scaleMax: c.double("advantage.entropy_max"),
                                    scope: c.string("advantage.entropy_scope") == "batch" ? .batch : .group)

        rollout.groupSize = c.int("rollout.group_size")
        rollout.temperature = Float(c.double("rollout.temperature"))
        rollout.topP = Float(c.double("rollout.top_p"))
        rollout.maxNewTokens = c.int("rollout.max_new_tokens")
        rollout.turns = c.int("rollout.turns")
        rollout.branchFactor = c.int("rollout.branch_factor")
        rollout.branchPoints = c.intList("rollout.branch_points")
        rollout.partial = c.bool("rollout.partial")

        warmStart.steps = c.int("warmstart.steps")
        warmStart.batch = c.int("warmstart.batch")
        warmStart.lr = Float(c.optionalDouble("warmstart.lr") ?? c.double("optimizer.lr"))
        warmStart.flawed = c.double("warmstart.flawed")

        ranks.trainers = c.int("ranks.trainers")
        ranks.rollouts = c.optionalInt("ranks.rollouts")
        ranks.maxStaleness = c.int("max_staleness")
        ranks.bufferGroups = c.int("buffer.max_groups")
        ranks.multiplex = c.bool("ranks.multiplex")
        ranks.admission = c.bool("rollout.admission")
        comm.overlap = c.bool("comm.overlap")
        comm.bucketMiB = c.double("comm.bucket_mib")
        comm.shardOptimizer = c.bool("optimizer.shard")

        if let t = c.string("data.trajectories") {
            data = .trajectories(t)
        } else if let cmd = c.string("data.env_command") {
            data = .external(cmd)
        } else {
            data = .task(c.string("data.task") ?? "code")
        }
        if case .task = data {} else {
            let given = c.explicit.filter { $0.hasPrefix("warmstart.") }.sorted()
            if !given.isEmpty {
                let why = data.isOnline ? "an external environment (data.env_command) has no demonstrations to learn from"
                    : "offline training (data.trajectories) learns from its trajectories only"
                warmStartUnused = "no warm start in this run, so \(given.joined(separator: ", ")) \(given.count == 1 ? "is" : "are") not used: "
                    + why + "; the warm start is for the built-in tasks (data.task)"
            }
        }
        shuffle = c.bool("data.shuffle")
        offlineBatch = c.int("batch.trajectories")
        prompts = c.int("batch.prompts")
        envTimeout = c.double("env.timeout_s")
        envWorkers = c.int("env.workers")
        watchdog = c.double("watchdog_s")
        json = c.json
    }

    /// The model the run starts from: the directory (of the family its config.json names;
    /// a checkpoint's `latest` file or a run directory stand for the checkpoint they name),
    /// or the family's initialisation of the configured shape with the run's seed.
    public func initialModel() throws -> any LanguageModel {
        switch model {
        case let .directory(dir):
            return try ModelDirectory.load(Checkpoint.resolveModelDirectory(dir))
        case let .random(config):
            let m = try config.makeModel()
            m.initialize(seed: UInt64(run.seed))
            return m
        }
    }

    /// The tokenizer of the model the run starts from (the byte tokenizer for a model made
    /// from scratch), checked against the model's vocabulary and able to frame episodes.
    /// - Throws: `RunError.settings` naming `model.init` (or `model.vocab_size`) and the fault.
    public func tokenizer(vocabSize: Int) throws(RunError) -> any Tokenizer {
        let key: String, model: String, t: any Tokenizer
        switch self.model {
        case let .directory(dir):
            key = "model.init"
            model = "the model \(dir)"
            do { t = try TokenizerLoader.load(directory: dir) } catch { throw .settings(key: key, reason: "\(error)") }
        case .random:
            key = "model.vocab_size"
            model = "the configured model"
            t = ByteTokenizer()
        }
        do {
            try t.check(fitsVocabularySize: vocabSize, model: model)
            try t.checkEpisodeSpecials()
        } catch { throw .settings(key: key, reason: "\(error)") }
        return t
    }

    /// The tokenizer files every checkpoint of the run carries (see `TokenizerLoader.checkpointFiles`).
    public func tokenizerFiles(vocabSize: Int) -> [String: Data] {
        if case let .directory(dir) = model { return TokenizerLoader.checkpointFiles(directory: dir, vocabSize: vocabSize) }
        return TokenizerLoader.checkpointFiles(directory: nil, vocabSize: vocabSize)
    }

    /// The built-in task the run uses, if any.
    public var task: Task? {
        if case let .task(name) = data { return builtinTask(name) }
        return nil
    }
}
