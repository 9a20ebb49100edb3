import Foundation
import KATModel
import KATRL
import KATSupport
import KATTrie

/// A fault in the configuration; every case names its source (the file, or --set) and,
/// where there is one, the key.
public enum ConfigError: Error, CustomStringConvertible, Equatable {
    /// The file cannot be read, is not JSON, or is not an object.
    case file(source: String, reason: String)
    /// A key that does not exist (with a suggestion when one is close).
    case unknownKey(source: String, key: String, suggestion: String?)
    /// A value of the wrong type or out of range, or in conflict with another key.
    case badValue(source: String, key: String, reason: String)
    /// A `--set` argument without `=`.
    case malformedOverride(String)

    public var description: String {
        switch self {
        case let .file(source, reason): return "\(source): \(reason)"
        case let .unknownKey(source, key, suggestion):
            return "\(source): key \(key): unknown key" + (suggestion.map { " (did you mean \($0)?)" } ?? "")
        case let .badValue(source, key, reason): return "\(source): key \(key): \(reason)"
        case let .malformedOverride(text): return "--set \(text): expected key=value"
        }
    }
}

/// The type and range of one configuration key.
public enum ConfigKind: Sendable {
    case int(ClosedRange<Int>)
    case double(ClosedRange<Double>)
    case bool
    case choice([String])
    /// A string (path, command) or null.
    case optionalString
    /// An integer or null.
    case optionalInt(ClosedRange<Int>)
    /// A number or null.
    case optionalDouble(ClosedRange<Double>)
    case doublePair(ClosedRange<Double>)
    case intList(ClosedRange<Int>)

    /// The values a key takes, as `kat-dist train --keys` and Docs/config.md show them.
    public var allowed: String {
        func n(_ d: Double) -> String { d == d.rounded() && abs(d) < 1e15 ? String(Int(d)) : "\(d)" }
        switch self {
        case let .int(r): return "integer \(r.lowerBound) to \(r.upperBound)"
        case let .double(r): return "number \(n(r.lowerBound)) to \(n(r.upperBound))"
        case .bool: return "true | false"
        case let .choice(options): return options.joined(separator: " | ")
        case .optionalString: return "text or null"
        case let .optionalInt(r): return "integer \(r.lowerBound) to \(r.upperBound) or null"
        case let .optionalDouble(r): return "number \(n(r.lowerBound)) to \(n(r.upperBound)) or null"
        case let .doublePair(r): return "[a, b], each \(n(r.lowerBound)) to \(n(r.upperBound))"
        case let .intList(r): return "list of integers \(r.lowerBound) to \(r.upperBound)"
        }
    }
}

/// One configuration key, with its type and range, its default and what it means.
public struct ConfigKey: Sendable {
    public var name: String
    public var kind: ConfigKind
    public var defaultValue: JSON
    public var help: String
}

/// The resolved configuration of a run: every key (Docs/config.md) with its value.
///
/// Read from one JSON file of nested objects, then `--set key=value` overrides by dotted
/// key. Unknown keys and out-of-range values are errors that name the key.
public struct TrainConfig: Sendable {
    public private(set) var values: [String: JSON]
    /// Keys set by the file or --set (not left at their defaults).
    public private(set) var explicit: Set<String> = []

    public static let keys: [ConfigKey] = [
        ConfigKey(name: "model.init", kind: .optionalString, defaultValue: .null, help: "model directory to start from (null: random init)"),
        ConfigKey(name: "model.vocab_size", kind: .int(1...10_000_000), defaultValue: 260, help: "vocabulary size"),
        ConfigKey(name: "model.n_positions", kind: .int(1...1_000_000), defaultValue: 128, help: "context length"),
        ConfigKey(name: "model.n_embd", kind: .int(1...65_536), defaultValue: 128, help: "embedding width C"),
        ConfigKey(name: "model.n_layer", kind: .int(1...1000), defaultValue: 4, help: "layers L"),
        ConfigKey(name: "model.n_head", kind: .int(1...4096), defaultValue: 4, help: "attention heads"),
        ConfigKey(name: "model.family", kind: .choice(ModelFamily.allCases.map(\.rawValue)), defaultValue: "gpt2",
                  help: "model family of a random initialisation (model.init: its config.json decides)"),
        ConfigKey(name: "model.n_kv_head", kind: .optionalInt(1...4096), defaultValue: .null,
                  help: "llama/qwen2: key-value heads g, dividing model.n_head (null: n_head)"),
        ConfigKey(name: "model.intermediate_size", kind: .optionalInt(1...1_048_576), defaultValue: .null,
                  help: "llama/qwen2: SwiGLU width F (null: 4 x n_embd)"),
        ConfigKey(name: "model.rope_theta", kind: .double(1.000_001...1e12), defaultValue: 10_000.0, help: "llama/qwen2: rotary base"),
        ConfigKey(name: "model.rms_norm_eps", kind: .double(1e-12...1), defaultValue: 1e-6, help: "llama/qwen2: RMSNorm epsilon"),
        ConfigKey(name: "model.tie_word_embeddings", kind: .bool, defaultValue: true,
                  help: "llama/qwen2: output head tied to the token embedding (false: a separate lm_head)"),
        ConfigKey(name: "optimizer.name", kind: .choice(["adamw", "sgd"]), defaultValue: "adamw", help: "optimizer"),
        ConfigKey(name: "optimizer.lr", kind: .double(0...10), defaultValue: 5e-4, help: "peak learning rate"),
        ConfigKey(name: "optimizer.betas", kind: .doublePair(0...0.999_999_9), defaultValue: [0.9, 0.999], help: "Adam betas"),
        ConfigKey(name: "optimizer.eps", kind: .double(1e-30...1), defaultValue: 1e-8, help: "Adam epsilon"),
        ConfigKey(name: "optimizer.weight_decay", kind: .double(0...10), defaultValue: 0.0, help: "decoupled weight decay (matrices and embeddings)"),
        ConfigKey(name: "optimizer.grad_clip", kind: .double(0...1e9), defaultValue: 1.0, help: "global-norm clip, 0 = off"),
        ConfigKey(name: "optimizer.schedule", kind: .choice(["constant", "cosine"]), defaultValue: "cosine", help: "learning-rate schedule"),
        ConfigKey(name: "optimizer.warmup_steps", kind: .int(0...10_000_000), defaultValue: 0, help: "linear warm-up steps"),
        ConfigKey(name: "data.task", kind: .optionalString, defaultValue: "code", help: "built-in environment (code, arithmetic, explore); used when no other source is set"),
        ConfigKey(name: "data.env_command", kind: .optionalString, defaultValue: .null, help: "external environment command"),
        ConfigKey(name: "data.trajectories", kind: .optionalString, defaultValue: .null, help: "JSONL file to train on offline"),
        ConfigKey(name: "data.packing", kind: .choice(["trie", "flat"]), defaultValue: "trie", help: "trie packing or flat sequences"),
        ConfigKey(name: "data.shuffle", kind: .bool, defaultValue: true, help: "shuffle groups each epoch after the first (offline)"),
        ConfigKey(name: "batch.prompts", kind: .int(1...1_000_000), defaultValue: 16, help: "prompts (groups) per step, online"),
        ConfigKey(name: "batch.trajectories", kind: .int(1...100_000_000), defaultValue: 64, help: "trajectories per step, offline"),
        ConfigKey(name: "batch.minibatches", kind: .int(1...100_000), defaultValue: 1, help: "minibatches of whole groups per step"),
        ConfigKey(name: "batch.max_tokens", kind: .int(1...100_000_000), defaultValue: 16384, help: "trie tokens per micro-batch"),
        ConfigKey(name: "steps", kind: .int(1...100_000_000), defaultValue: 200, help: "optimizer steps"),
        ConfigKey(name: "seed", kind: .int(0...Int(Int32.max)), defaultValue: 1, help: "random seed"),
        ConfigKey(name: "deterministic", kind: .bool, defaultValue: false, help: "bitwise repeatable runs"),
        ConfigKey(name: "rollout.group_size", kind: .int(1...100_000), defaultValue: 8, help: "samples per prompt"),
        ConfigKey(name: "rollout.temperature", kind: .double(1e-6...1e6), defaultValue: 1.0, help: "sampling temperature tau"),
        ConfigKey(name: "rollout.top_p", kind: .double(1e-6...1), defaultValue: 1.0, help: "nucleus sampling"),
        ConfigKey(name: "rollout.max_new_tokens", kind: .int(1...1_000_000), defaultValue: 16, help: "tokens per answer"),
        ConfigKey(name: "rollout.turns", kind: .int(1...10_000), defaultValue: 1, help: "turns per episode"),
        ConfigKey(name: "rollout.branch_factor", kind: .int(1...1000), defaultValue: 1, help: "children per branch point"),
        ConfigKey(name: "rollout.branch_points", kind: .intList(1...1_000_000), defaultValue: [], help: "answer depths at which samples branch"),
        ConfigKey(name: "rollout.partial", kind: .bool, defaultValue: true,
                  help: "rollout ranks take new weights between decode steps of unfinished episodes (asynchronous mode)"),
        ConfigKey(name: "eval.every", kind: .int(0...100_000_000), defaultValue: 25, help: "evaluate every N steps, 0 = never"),
        ConfigKey(name: "eval.prompts", kind: .int(1...1_000_000), defaultValue: 200, help: "held-out prompts per evaluation"),
        ConfigKey(name: "eval.pass_at_k", kind: .bool, defaultValue: true,
                  help: "also sample rollout.group_size answers per held-out prompt: pass@1 and pass@k"),
        ConfigKey(name: "loss.mode", kind: .choice(LossMode.allCases.map(\.rawValue)), defaultValue: "token-mean", help: "normalisation"),
        ConfigKey(name: "loss.eps_low", kind: .double(0...1), defaultValue: 0.2, help: "PPO clip below 1"),
        ConfigKey(name: "loss.eps_high", kind: .double(0...100), defaultValue: 0.2, help: "PPO clip above 1"),
        ConfigKey(name: "loss.ppo_epochs", kind: .int(1...1000), defaultValue: 1, help: "passes over each batch"),
        ConfigKey(name: "loss.kl_coef", kind: .double(0...1e6), defaultValue: 0.0, help: "KL penalty to the initial model"),
        ConfigKey(name: "loss.off_policy", kind: .choice(PolicyLossConfig.OffPolicy.allCases.map(\.rawValue)), defaultValue: "ppo",
                  help: "ppo: clip against the behaviour policy; decoupled: clip against the step's start weights times the importance weight"),
        ConfigKey(name: "loss.is_cap", kind: .double(0...1e9), defaultValue: 0.0, help: "decoupled: truncate the importance weight at this value (0: no truncation)"),
        ConfigKey(name: "loss.entropy_token_frac", kind: .double(1e-6...1), defaultValue: 1.0,
                  help: "train only this share of a minibatch's loss tokens, those of highest behaviour entropy (1: all)"),
        ConfigKey(name: "loss.kl_cov_frac", kind: .double(0...1), defaultValue: 0.0,
                  help: "KL-Cov: share of a minibatch's loss tokens, by covariance of log-prob and advantage, penalised (0: off)"),
        ConfigKey(name: "loss.kl_cov_coef", kind: .double(0...1e6), defaultValue: 1.0, help: "KL-Cov: weight of (l - b)^2 / 2 on the chosen tokens"),
        ConfigKey(name: "advantage.estimator", kind: .choice(["grpo", "rloo", "given"]), defaultValue: "grpo", help: "advantage estimator"),
        ConfigKey(name: "advantage.normalize_std", kind: .bool, defaultValue: true, help: "GRPO divides by the group's std"),
        ConfigKey(name: "advantage.entropy_scaling", kind: .bool, defaultValue: true, help: "entropy-aware advantage scaling"),
        ConfigKey(name: "advantage.entropy_alpha", kind: .double(0...100), defaultValue: 1.0, help: "exponent of H / mean H"),
        ConfigKey(name: "advantage.entropy_min", kind: .double(0...1e6), defaultValue: 0.5, help: "lower clip of the scale"),
        ConfigKey(name: "advantage.entropy_max", kind: .double(0...1e6), defaultValue: 2.0, help: "upper clip of the scale"),
        ConfigKey(name: "advantage.entropy_scope", kind: .choice(["group", "batch"]), defaultValue: "group", help: "mean over the group or the batch"),
        ConfigKey(name: "advantage.entropy_bonus_beta", kind: .double(0...1e6), defaultValue: 0.0,
                  help: "per-token entropy bonus: A + min(beta H_t, |A| / kappa) (0: off)"),
        ConfigKey(name: "advantage.entropy_bonus_kappa", kind: .double(1e-6...1e6), defaultValue: 2.0, help: "the entropy bonus is at most |A| / kappa"),
        ConfigKey(name: "ranks.trainers", kind: .int(1...1_000_000), defaultValue: 1, help: "trainer ranks T"),
        ConfigKey(name: "ranks.rollouts", kind: .optionalInt(0...1_000_000), defaultValue: .null, help: "rollout ranks R (null: world size - T)"),
        ConfigKey(name: "comm.overlap", kind: .bool, defaultValue: true, help: "sum each gradient bucket over trainers as soon as backward has filled it"),
        ConfigKey(name: "comm.bucket_mib", kind: .double(0.001...4096), defaultValue: 4.0, help: "gradient bucket size, MiB"),
        ConfigKey(name: "optimizer.shard", kind: .bool, defaultValue: false, help: "shard the optimizer state over trainers (reduce-scatter, slice update, allgather)"),
        ConfigKey(name: "ranks.multiplex", kind: .bool, defaultValue: true, help: "trainers generate rollouts themselves when they would wait for data (not when max_staleness is below 2 x minibatches x ppo_epochs)"),
        ConfigKey(name: "max_staleness", kind: .int(0...1000), defaultValue: 4, help: "largest policy lag trained"),
        ConfigKey(name: "rollout.admission", kind: .bool, defaultValue: true,
                  help: "rollout ranks start a group only while it can be trained within max_staleness (false: generate freely, drop stale groups)"),
        ConfigKey(name: "buffer.max_groups", kind: .int(1...1_000_000), defaultValue: 16, help: "trainers' buffer of groups"),
        ConfigKey(name: "env.timeout_s", kind: .double(0.001...86_400), defaultValue: 10.0, help: "environment reply time-out, seconds"),
        ConfigKey(name: "watchdog_s", kind: .double(1...1_000_000), defaultValue: 300.0, help: "seconds a rank may stay silent (no heartbeat) before the job ends naming it"),
        ConfigKey(name: "env.workers", kind: .int(1...4096), defaultValue: 1, help: "external environment processes per rank, each living for the whole run"),
        ConfigKey(name: "checkpoint.every", kind: .int(0...100_000_000), defaultValue: 0, help: "checkpoint every N steps (0: final only)"),
        ConfigKey(name: "checkpoint.keep", kind: .int(1...1_000_000), defaultValue: 3, help: "newest checkpoints kept"),
        ConfigKey(name: "checkpoint.dtype", kind: .choice(["f32", "bf16"]), defaultValue: "f32", help: "element type of checkpoint weights (bf16 halves them; a resume then starts from rounded weights; optimizer state stays f32)"),
        ConfigKey(name: "check.flat_every", kind: .int(0...100_000_000), defaultValue: 0, help: "trie-vs-flat drift check every N steps"),
        ConfigKey(name: "log.trained_ids", kind: .bool, defaultValue: false, help: "write RUN/trained_ids.jsonl: the trajectory ids trained at each step"),
        ConfigKey(name: "warmstart.steps", kind: .int(0...100_000_000), defaultValue: 400, help: "supervised steps on the task's reference answers before RL"),
        ConfigKey(name: "warmstart.batch", kind: .int(1...1_000_000), defaultValue: 64, help: "examples per supervised warm-start step"),
        ConfigKey(name: "warmstart.lr", kind: .optionalDouble(0...10), defaultValue: 1e-3, help: "warm-start learning rate (null: optimizer.lr)"),
        ConfigKey(name: "warmstart.flawed", kind: .double(0...1), defaultValue: 0.6, help: "share of warm-start demonstrations that are flawed (a weaker teacher's)"),
    ]

    static let byName: [String: ConfigKey] = Dictionary(uniqueKeysWithValues: keys.map { ($0.name, $0) })

    /// The built-in defaults.
    public init() {
        values = Dictionary(uniqueKeysWithValues: TrainConfig.keys.map { ($0.name, $0.defaultValue) })
    }

    /// Reads a config file (nested objects, dotted keys allowed too) over the defaults.
    public static func load(path: String) throws(ConfigError) -> TrainConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .file(source: path, reason: FileManager.default.fileExists(atPath: path) ? "cannot read the file" : "no such file")
        }
        return try parse(text: String(decoding: data, as: UTF8.self), source: path)
    }

    public static func parse(text: String, source: String) throws(ConfigError) -> TrainConfig {
        let json: JSON
        do { json = try JSON.parse(text) } catch { throw .file(source: source, reason: "not valid JSON (\(error))") }
        guard json.objectMembers != nil else { throw .file(source: source, reason: "the config must be a JSON object") }
        var cfg = TrainConfig()
        func walk(_ v: JSON, prefix: String) throws(ConfigError) {
            guard let members = v.objectMembers else { return }
            for (k, child) in members {
                let name = prefix.isEmpty ? k : prefix + "." + k
                if byName[name] != nil {
                    try cfg.set(name, child, source: source)
                } else if child.objectMembers != nil, keys.contains(where: { $0.name.hasPrefix(name + ".") }) {
                    try walk(child, prefix: name)
                } else {
                    throw .unknownKey(source: source, key: name, suggestion: suggestion(name))
                }
            }
        }
        try walk(json, prefix: "")
        return cfg
    }

    static func suggestion(_ name: String) -> String? {
        let last = name.split(separator: ".").last.map(String.init) ?? name
        return keys.first(where: { $0.name.hasSuffix("." + last) || $0.name == last })?.name
    }

    /// Applies `key=value`; the value is read as JSON when it parses, else as a string.
    public mutating func apply(override: String) throws(ConfigError) {
        guard let eq = override.firstIndex(of: "=") else {
            throw .malformedOverride(override)
        }
        let key = String(override[..<eq]), text = String(override[override.index(after: eq)...])
        guard TrainConfig.byName[key] != nil else {
            throw .unknownKey(source: "--set", key: key, suggestion: TrainConfig.suggestion(key))
        }
        let value = (try? JSON.parse(text)) ?? .string(text)
        try set(key, value, source: "--set")
    }

    /// Sets one key after checking its type and range.
    public mutating func set(_ key: String, _ value: JSON, source: String) throws(ConfigError) {
        guard let spec = TrainConfig.byName[key] else { throw .unknownKey(source: source, key: key, suggestion: nil) }
        explicit.insert(key)
        func bad(_ why: String) -> ConfigError { .badValue(source: source, key: key, reason: why) }
        switch spec.kind {
        case let .int(r):
            guard let i = value.intValue else { throw bad("must be an integer, got \(value.serialized)") }
            guard r.contains(i) else { throw bad("must be in \(r.lowerBound)...\(r.upperBound), got \(i)") }
            values[key] = JSON(i)
        case let .optionalInt(r):
            if value.isNull { values[key] = .null; return }
            guard let i = value.intValue else { throw bad("must be an integer or null, got \(value.serialized)") }
            guard r.contains(i) else { throw bad("must be in \(r.lowerBound)...\(r.upperBound), got \(i)") }
            values[key] = JSON(i)
        case let .optionalDouble(r):
            if value.isNull { values[key] = .null; return }
            guard let d = value.doubleValue, d.isFinite else { throw bad("must be a number or null, got \(value.serialized)") }
            guard r.contains(d) else { throw bad("must be in \(r.lowerBound)...\(r.upperBound), got \(d)") }
            values[key] = .double(d)
        case let .double(r):
            guard let d = value.doubleValue, d.isFinite else { throw bad("must be a number, got \(value.serialized)") }
            guard r.contains(d) else { throw bad("must be in \(r.lowerBound)...\(r.upperBound), got \(d)") }
            values[key] = .double(d)
        case .bool:
            guard let b = value.boolValue else { throw bad("must be true or false, got \(value.serialized)") }
            values[key] = .bool(b)
        case let .choice(options):
            guard let s = value.stringValue, options.contains(s) else {
                throw bad("must be one of \(options.joined(separator: ", ")), got \(value.serialized)")
            }
            values[key] = .string(s)
        case .optionalString:
            if value.isNull { values[key] = .null; return }
            guard let s = value.stringValue, !s.isEmpty else { throw bad("must be a non-empty string or null, got \(value.serialized)") }
            values[key] = .string(s)
        case let .doublePair(r):
            guard let a = value.arrayValue, a.count == 2, let x = a[0].doubleValue, let y = a[1].doubleValue,
                  r.contains(x), r.contains(y) else {
                throw bad("must be two numbers in \(r.lowerBound)...\(r.upperBound), got \(value.serialized)")
            }
            values[key] = .array([.double(x), .double(y)])
        case let .intList(r):
            guard let a = value.arrayValue else { throw bad("must be an array of integers, got \(value.serialized)") }
            var out: [JSON] = []
            for v in a {
                guard let i = v.intValue, r.contains(i) else { throw bad("entries must be integers in \(r.lowerBound)...\(r.upperBound), got \(v.serialized)") }
                out.append(JSON(i))
            }
            values[key] = .array(out)
        }
    }

    // MARK: - Typed access

    public func int(_ key: String) -> Int { values[key]?.intValue ?? 0 }
    public func optionalInt(_ key: String) -> Int? { values[key]?.intValue }
    public func double(_ key: String) -> Double { values[key]?.doubleValue ?? 0 }
    public func optionalDouble(_ key: String) -> Double? { values[key]?.doubleValue }
    public func bool(_ key: String) -> Bool { values[key]?.boolValue ?? false }
    public func string(_ key: String) -> String? { values[key]?.stringValue }
    public func intList(_ key: String) -> [Int] { values[key]?.arrayValue?.compactMap(\.intValue) ?? [] }
    public func doubleList(_ key: String) -> [Double] { values[key]?.arrayValue?.compactMap(\.doubleValue) ?? [] }

    /// Checks relations between keys; the message names them.
    public func validate(source: String) throws(ConfigError) {
        if int("model.n_embd") % int("model.n_head") != 0 {
            throw .badValue(source: source, key: "model.n_head", reason: "must divide model.n_embd (\(int("model.n_embd")))")
        }
        let llamaKeys = ["model.n_kv_head", "model.intermediate_size", "model.rope_theta", "model.rms_norm_eps", "model.tie_word_embeddings"]
        if string("model.family") == ModelFamily.gpt2.rawValue {
            if let key = llamaKeys.first(where: { explicit.contains($0) }) {
                throw .badValue(source: source, key: key, reason: "applies to model.family llama or qwen2 only (model.family is gpt2)")
            }
        } else {
            if let g = optionalInt("model.n_kv_head"), int("model.n_head") % g != 0 {
                throw .badValue(source: source, key: "model.n_kv_head", reason: "must divide model.n_head (\(int("model.n_head")))")
            }
            if (int("model.n_embd") / int("model.n_head")) % 2 != 0 {
                throw .badValue(source: source, key: "model.n_head",
                                reason: "rotary positions need an even head size, but model.n_embd / model.n_head is \(int("model.n_embd") / int("model.n_head"))")
            }
        }
        if let late = intList("rollout.branch_points").first(where: { $0 >= int("rollout.max_new_tokens") }) {
            throw .badValue(source: source, key: "rollout.branch_points",
                            reason: "entry \(late) is not below rollout.max_new_tokens (\(int("rollout.max_new_tokens"))): samples would never branch there")
        }
        let sources = ["data.task", "data.env_command", "data.trajectories"].filter { string($0) != nil && explicit.contains($0) }
        if sources.count > 1 {
            throw .badValue(source: source, key: sources[1], reason: "only one of data.task, data.env_command, data.trajectories may be set")
        }
        if string("data.trajectories") == nil, int("batch.minibatches") > int("batch.prompts") {
            throw .badValue(source: source, key: "batch.minibatches",
                            reason: "must not exceed batch.prompts (\(int("batch.prompts"))): a minibatch holds whole groups, got \(int("batch.minibatches"))")
        }
        if explicit.contains("loss.is_cap"), double("loss.is_cap") > 0, string("loss.off_policy") != PolicyLossConfig.OffPolicy.decoupled.rawValue {
            throw .badValue(source: source, key: "loss.is_cap", reason: "applies to loss.off_policy decoupled only (loss.off_policy is \(string("loss.off_policy") ?? "ppo"))")
        }
        if string("data.trajectories") == nil {
            // Online runs compute advantages from the rewards of each prompt's samples.
            let estimator = string("advantage.estimator") ?? ""
            if estimator == AdvantageConfig.Estimator.given.rawValue {
                throw .badValue(source: source, key: "advantage.estimator",
                                reason: "given reads each trajectory's advantage field, which only offline data (data.trajectories) has; online runs use grpo or rloo")
            }
            let samples = int("rollout.group_size")
            if samples < 2 {
                throw .badValue(source: source, key: "rollout.group_size",
                                reason: "advantage.estimator \(estimator) compares each sample with the others of its prompt: a group needs at least 2 samples, got \(samples) (every advantage would be 0)")
            }
        }
        if double("advantage.entropy_min") > double("advantage.entropy_max") {
            throw .badValue(source: source, key: "advantage.entropy_min", reason: "must not exceed advantage.entropy_max")
        }
    }

    /// The resolved config as nested JSON, keys in table order.
    public var json: JSON {
        var root: [(String, JSON)] = []
        func insert(_ path: ArraySlice<Substring>, _ v: JSON, into members: inout [(String, JSON)]) {
            guard let first = path.first else { return }
            let head = String(first)
            if path.count == 1 { members.append((head, v)); return }
            if let i = members.firstIndex(where: { $0.0 == head }), case var .object(sub) = members[i].1 {
                insert(path.dropFirst(), v, into: &sub)
                members[i].1 = .object(sub)
            } else {
                var sub: [(String, JSON)] = []
                insert(path.dropFirst(), v, into: &sub)
                members.append((head, .object(sub)))
            }
        }
        for k in TrainConfig.keys { insert(k.name.split(separator: ".")[...], values[k.name] ?? .null, into: &root) }
        return .object(root)
    }
}
