import KATSupport

/// Hyper-parameters of the Llama family (`llama`, `qwen2`), read and written as Hugging
/// Face's `LlamaForCausalLM` / `Qwen2ForCausalLM` `config.json`.
///
/// Names follow the rest of kat-dist: `nEmbd` is `hidden_size` (C), `nPositions` is
/// `max_position_embeddings`, `nHead` is `num_attention_heads` (NH), `nKVHead` is
/// `num_key_value_heads` (g), `headDim` is `head_dim` (d), `intermediateSize` is the
/// SwiGLU width F.
public struct LlamaConfig: ModelConfiguration, Equatable {
    /// `.llama` or `.qwen2` (Qwen2 always has q, k and v biases and no output bias).
    public var family: ModelFamily
    public var vocabSize: Int
    public var nPositions: Int
    public var nEmbd: Int
    public var nLayer: Int
    public var nHead: Int
    public var nKVHead: Int
    public var headDim: Int
    public var intermediateSize: Int
    /// Base of the rotary frequencies: theta_i = ropeTheta^(-2i/d).
    public var ropeTheta: Double
    public var rmsNormEps: Double
    /// Whether the output head is the token embedding (no `lm_head.weight`).
    public var tieWordEmbeddings: Bool
    /// Llama's `attention_bias`: biases on q, k, v and o. Ignored for qwen2.
    public var attentionBias: Bool
    public var bosTokenId: Int?
    public var eosTokenId: Int?
    public var sepTokenId: Int?
    public var padTokenId: Int?

    /// A config of the family; `nKVHead` defaults to `nHead`, `headDim` to C / NH,
    /// `intermediateSize` to 4C. With no special ids given, a vocabulary that holds the
    /// byte tokenizer's gets them (as `GPT2Config`).
    public init(family: ModelFamily = .llama, vocabSize: Int = GPT2Config.byteVocabSize, nPositions: Int = 512, nEmbd: Int = 128,
                nLayer: Int = 4, nHead: Int = 4, nKVHead: Int? = nil, headDim: Int? = nil, intermediateSize: Int? = nil,
                ropeTheta: Double = 10_000, rmsNormEps: Double = 1e-6, tieWordEmbeddings: Bool = true, attentionBias: Bool = false,
                bosTokenId: Int? = nil, eosTokenId: Int? = nil, sepTokenId: Int? = nil, padTokenId: Int? = nil) {
        self.family = family
        self.vocabSize = vocabSize
        self.nPositions = nPositions
        self.nEmbd = nEmbd
        self.nLayer = nLayer
        self.nHead = nHead
        self.nKVHead = nKVHead ?? nHead
        self.headDim = headDim ?? (nHead > 0 ? nEmbd / nHead : 0)
        self.intermediateSize = intermediateSize ?? 4 * nEmbd
        self.ropeTheta = ropeTheta
        self.rmsNormEps = rmsNormEps
        self.tieWordEmbeddings = tieWordEmbeddings
        self.attentionBias = attentionBias
        self.bosTokenId = bosTokenId
        self.eosTokenId = eosTokenId
        self.sepTokenId = sepTokenId
        self.padTokenId = padTokenId
        if bosTokenId == nil, eosTokenId == nil, sepTokenId == nil, padTokenId == nil, vocabSize >= GPT2Config.byteVocabSize {
            self.bosTokenId = 256; self.eosTokenId = 257; self.sepTokenId = 258; self.padTokenId = 259
        }
    }

    /// Whether q, k and v have biases: always for qwen2, `attention_bias` for llama.
    public var qkvBias: Bool { family == .qwen2 || attentionBias }
    /// Whether o_proj has a bias: `attention_bias` for llama, never for qwen2.
    public var outputBias: Bool { family == .llama && attentionBias }

    /// Width of the queries, NH d (C for every model kat-dist initialises).
    public var queryWidth: Int { nHead * headDim }
    /// Keys are g d wide.
    public var keyValueWidth: Int { nKVHead * headDim }

    public var parameterCount: Int { LlamaLayout(config: self).count }

    /// 6 x the parameters of the layers: per layer, q and o (2 C NH d, that is 2 C^2 when
    /// NH d = C), k and v (2 C g d), gate, up and down (3 C F); biases and norms are not
    /// counted. Forward 2 FLOPs per weight, backward 4.
    public var layerFLOPsPerToken: Double {
        let c = Double(nEmbd), l = Double(nLayer), q = Double(queryWidth), kv = Double(keyValueWidth), f = Double(intermediateSize)
        return 6 * l * (2 * c * q + 2 * c * kv + 3 * c * f)
    }

    /// 6 V C: the head's matrix (tied or not), forward plus backward.
    public var headFLOPsPerRow: Double { 6 * Double(vocabSize) * Double(nEmbd) }

    /// 12 NH d L per (query, key) pair: q.k and p.v per head (4 NH d forward), times 3
    /// with backward; 12 C L when NH d = C.
    public var flopsPerAttentionPair: Double { 12 * Double(queryWidth) * Double(nLayer) }

    public var shapeSummary: String {
        "\(family.rawValue) V=\(vocabSize) P=\(nPositions) C=\(nEmbd) L=\(nLayer) NH=\(nHead) KV=\(nKVHead) d=\(headDim) F=\(intermediateSize)"
            + (tieWordEmbeddings ? " tied" : " untied") + (qkvBias ? " qkv-bias" : "") + (outputBias ? " o-bias" : "")
    }

    public func makeModel() throws(ModelError) -> any LanguageModel { try Llama(config: self) }

    /// Checks the hyper-parameters; the message names the `config.json` key at fault.
    public func validate(source: String = "config") throws(ModelError) {
        func bad(_ key: String, _ why: String) -> ModelError { .badConfig(source: source, key: key, reason: why) }
        if family == .gpt2 { throw bad("model_type", "a Llama-family config must be llama or qwen2") }
        if vocabSize < 1 || vocabSize > 10_000_000 { throw bad("vocab_size", "must be between 1 and 10000000, got \(vocabSize)") }
        if nPositions < 1 || nPositions > 10_000_000 { throw bad("max_position_embeddings", "must be between 1 and 10000000, got \(nPositions)") }
        if nEmbd < 1 || nEmbd > 65_536 { throw bad("hidden_size", "must be between 1 and 65536, got \(nEmbd)") }
        if nLayer < 1 || nLayer > 1_000 { throw bad("num_hidden_layers", "must be between 1 and 1000, got \(nLayer)") }
        if nHead < 1 || nHead > 4096 { throw bad("num_attention_heads", "must be between 1 and 4096, got \(nHead)") }
        if nKVHead < 1 || nHead % nKVHead != 0 {
            throw bad("num_key_value_heads", "must divide num_attention_heads (\(nHead)), got \(nKVHead)")
        }
        if headDim < 2 || headDim % 2 != 0 || headDim > 65_536 {
            throw bad("head_dim", "must be even and at least 2 (rotary pairs), got \(headDim)")
        }
        if intermediateSize < 1 || intermediateSize > 1_048_576 {
            throw bad("intermediate_size", "must be between 1 and 1048576, got \(intermediateSize)")
        }
        if !(ropeTheta > 1) || !ropeTheta.isFinite { throw bad("rope_theta", "must be a finite number above 1, got \(ropeTheta)") }
        if !(rmsNormEps > 0) || rmsNormEps > 1 { throw bad("rms_norm_eps", "must be in (0, 1], got \(rmsNormEps)") }
        for (key, id) in [("bos_token_id", bosTokenId), ("eos_token_id", eosTokenId), ("sep_token_id", sepTokenId), ("pad_token_id", padTokenId)] {
            if let id, id < 0 || id >= vocabSize { throw bad(key, "must be a token id below vocab_size (\(vocabSize)), got \(id)") }
        }
    }

    // MARK: - config.json

    /// The Hugging Face `config.json` object: every key `transformers` needs to build
    /// `LlamaForCausalLM` / `Qwen2ForCausalLM` of this shape. The rotary base is written both
    /// the older way (`rope_theta`, `rope_scaling: null`) and the newer (`rope_parameters`).
    public func huggingFaceJSON() -> JSON {
        let rope: JSON = .object([("rope_theta", JSON(ropeTheta)), ("rope_type", "default")])
        var m: [(String, JSON)] = [
            ("model_type", JSON(family.rawValue)),
            ("architectures", [family == .qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM"]),
            ("vocab_size", JSON(vocabSize)), ("max_position_embeddings", JSON(nPositions)),
            ("hidden_size", JSON(nEmbd)), ("intermediate_size", JSON(intermediateSize)),
            ("num_hidden_layers", JSON(nLayer)), ("num_attention_heads", JSON(nHead)),
            ("num_key_value_heads", JSON(nKVHead)), ("head_dim", JSON(headDim)),
            ("hidden_act", "silu"), ("rms_norm_eps", JSON(rmsNormEps)),
            ("rope_theta", JSON(ropeTheta)), ("rope_scaling", .null), ("rope_parameters", rope),
            ("tie_word_embeddings", JSON(tieWordEmbeddings)), ("attention_dropout", 0.0),
            ("initializer_range", 0.02), ("use_cache", true), ("torch_dtype", "float32"),
        ]
        if family == .llama {
            m += [("attention_bias", JSON(attentionBias)), ("mlp_bias", false), ("pretraining_tp", 1)]
        } else {
            m += [("use_sliding_window", false), ("sliding_window", .null), ("max_window_layers", JSON(nLayer)),
                  ("layer_types", .array((0..<nLayer).map { _ in "full_attention" }))]
        }
        if let bosTokenId { m.append(("bos_token_id", JSON(bosTokenId))) }
        if let eosTokenId { m.append(("eos_token_id", JSON(eosTokenId))) }
        if let sepTokenId { m.append(("sep_token_id", JSON(sepTokenId))) }
        if let padTokenId { m.append(("pad_token_id", JSON(padTokenId))) }
        return .object(m)
    }

    /// Reads a Hugging Face Llama or Qwen2 `config.json` (already parsed), refusing what
    /// kat-dist does not compute exactly: rotary scaling other than none, sliding-window
    /// attention, an activation other than SiLU, MLP biases, attention dropout.
    /// - Parameter family: from `model_type`.
    public static func fromHuggingFaceJSON(_ d: JSON, family: ModelFamily, source: String) throws(ModelError) -> LlamaConfig {
        func bad(_ key: String, _ why: String) -> ModelError { .badConfig(source: source, key: key, reason: why) }
        func int(_ key: String, required: Bool = true) throws(ModelError) -> Int? {
            guard let v = d[key], !v.isNull else {
                if required { throw bad(key, "missing") }
                return nil
            }
            guard let n = v.intValue else { throw bad(key, "must be an integer, got \(v.serialized)") }
            return n
        }
        func number(_ v: JSON?, _ key: String) throws(ModelError) -> Double? {
            guard let v, !v.isNull else { return nil }
            guard let x = v.doubleValue else { throw bad(key, "must be a number, got \(v.serialized)") }
            return x
        }
        func flag(_ key: String) throws(ModelError) -> Bool? {
            guard let v = d[key], !v.isNull else { return nil }
            guard let b = v.boolValue else { throw bad(key, "must be true or false, got \(v.serialized)") }
            return b
        }
        /// A special token id: an integer, or a list whose first entry is taken.
        func tokenID(_ key: String) throws(ModelError) -> Int? {
            guard let v = d[key], !v.isNull else { return nil }
            if let i = v.intValue { return i }
            if let a = v.arrayValue, let first = a.first?.intValue, a.allSatisfy({ $0.intValue != nil }) { return first }
            throw bad(key, "must be a token id (or a list of them), got \(v.serialized)")
        }
        if let act = d["hidden_act"], act != "silu" {
            throw bad("hidden_act", "only silu (SwiGLU) is supported, got \(act.serialized)")
        }
        // The rotary embedding: rope_parameters (newer configs) or rope_theta + rope_scaling.
        var theta = try number(d["rope_theta"], "rope_theta")
        for key in ["rope_scaling", "rope_parameters"] {
            guard let v = d[key], !v.isNull else { continue }
            guard v.objectMembers != nil else { throw bad(key, "must be an object or null, got \(v.serialized)") }
            let type = v["rope_type"] ?? v["type"] ?? "default"
            if type != "default" {
                throw bad(key, "rotary scaling \(type.serialized) is not supported (only the default rotary embedding)")
            }
            if let t = try number(v["rope_theta"], key + ".rope_theta") { theta = t }
        }
        if let f = try number(d["partial_rotary_factor"], "partial_rotary_factor"), f != 1 {
            throw bad("partial_rotary_factor", "only a rotary embedding over the whole head (1) is supported, got \(f)")
        }
        if let v = d["use_sliding_window"], v != .bool(false), !v.isNull {
            throw bad("use_sliding_window", "sliding-window attention is not supported; only false is")
        }
        if let types = d["layer_types"], !types.isNull {
            guard let a = types.arrayValue, a.allSatisfy({ $0 == "full_attention" }) else {
                throw bad("layer_types", "only full_attention layers are supported, got \(types.serialized)")
            }
        }
        if try flag("mlp_bias") == true { throw bad("mlp_bias", "MLP biases are not supported; only false is") }
        if let p = try number(d["attention_dropout"], "attention_dropout"), p != 0 {
            throw bad("attention_dropout", "kat-dist trains without dropout; only 0 is supported, got \(p)")
        }
        let c = try int("hidden_size") ?? 0, nh = try int("num_attention_heads") ?? 0
        if try int("head_dim", required: false) == nil, nh > 0, c % nh != 0 {
            throw bad("num_attention_heads", "must divide hidden_size (\(c)) when head_dim is not given, got \(nh)")
        }
        var cfg = LlamaConfig(family: family, vocabSize: try int("vocab_size") ?? 0, nPositions: try int("max_position_embeddings") ?? 0,
                              nEmbd: c, nLayer: try int("num_hidden_layers") ?? 0, nHead: nh,
                              nKVHead: try int("num_key_value_heads", required: false), headDim: try int("head_dim", required: false),
                              intermediateSize: try int("intermediate_size") ?? 0,
                              ropeTheta: theta ?? 10_000, rmsNormEps: try number(d["rms_norm_eps"], "rms_norm_eps") ?? 1e-6,
                              tieWordEmbeddings: try flag("tie_word_embeddings") ?? false,
                              attentionBias: family == .llama ? try flag("attention_bias") ?? false : false)
        // The ids the file gives, and no others (the byte tokenizer's are not assumed).
        cfg.bosTokenId = try tokenID("bos_token_id")
        cfg.eosTokenId = try tokenID("eos_token_id")
        cfg.sepTokenId = try tokenID("sep_token_id")
        cfg.padTokenId = try tokenID("pad_token_id")
        try cfg.validate(source: source)
        return cfg
    }
}
