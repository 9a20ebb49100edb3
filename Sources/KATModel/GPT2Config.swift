import KATSupport

/// GPT-2 hyper-parameters and the special token ids of kat-dist's byte tokenizer.
///
/// Written and read as a Hugging Face GPT-2 `config.json` (Docs/formats.md), so a model
/// directory opens in `transformers` unchanged.
public struct GPT2Config: ModelConfiguration, Equatable {
    public var vocabSize: Int
    public var nPositions: Int
    public var nEmbd: Int
    public var nLayer: Int
    public var nHead: Int
    public var bosTokenId: Int?
    public var eosTokenId: Int?
    public var sepTokenId: Int?
    public var padTokenId: Int?

    /// The byte tokenizer's vocabulary: bytes 0-255, then BOS, EOS, SEP, PAD.
    public static let byteVocabSize = 260

    public init(vocabSize: Int = GPT2Config.byteVocabSize, nPositions: Int = 512, nEmbd: Int = 128,
                nLayer: Int = 4, nHead: Int = 4,
                bosTokenId: Int? = nil, eosTokenId: Int? = nil, sepTokenId: Int? = nil,
                padTokenId: Int? = nil) {
        self.vocabSize = vocabSize
        self.nPositions = nPositions
        self.nEmbd = nEmbd
        self.nLayer = nLayer
        self.nHead = nHead
        self.bosTokenId = bosTokenId
        self.eosTokenId = eosTokenId
        self.sepTokenId = sepTokenId
        self.padTokenId = padTokenId
        // With no special ids given, a vocabulary that holds the byte tokenizer's gets them.
        if bosTokenId == nil, eosTokenId == nil, sepTokenId == nil, padTokenId == nil, vocabSize >= GPT2Config.byteVocabSize {
            self.bosTokenId = 256; self.eosTokenId = 257; self.sepTokenId = 258; self.padTokenId = 259
        }
    }

    /// Head size C / NH.
    public var headSize: Int { nEmbd / nHead }

    /// Checks the hyper-parameters; the message names the offending key.
    public func validate(source: String = "config") throws(ModelError) {
        func bad(_ key: String, _ why: String) -> ModelError { .badConfig(source: source, key: key, reason: why) }
        if vocabSize < 1 || vocabSize > 10_000_000 { throw bad("vocab_size", "must be between 1 and 10000000, got \(vocabSize)") }
        if nPositions < 1 || nPositions > 1_000_000 { throw bad("n_positions", "must be between 1 and 1000000, got \(nPositions)") }
        if nEmbd < 1 || nEmbd > 65_536 { throw bad("n_embd", "must be between 1 and 65536, got \(nEmbd)") }
        if nLayer < 1 || nLayer > 1_000 { throw bad("n_layer", "must be between 1 and 1000, got \(nLayer)") }
        if nHead < 1 || nEmbd % nHead != 0 { throw bad("n_head", "must divide n_embd (\(nEmbd)), got \(nHead)") }
        for (key, id) in [("bos_token_id", bosTokenId), ("eos_token_id", eosTokenId), ("sep_token_id", sepTokenId), ("pad_token_id", padTokenId)] {
            if let id, id < 0 || id >= vocabSize { throw bad(key, "must be a token id below vocab_size (\(vocabSize)), got \(id)") }
        }
    }

    /// Number of float parameters (wte is tied to the output head, counted once).
    public var parameterCount: Int { ParameterLayout(config: self).count }

    public var family: ModelFamily { .gpt2 }

    /// Keys are C wide (NH heads of C / NH).
    public var keyValueWidth: Int { nEmbd }

    /// 6 x 12 L C^2: the layers' matrices (4 C^2 of attention, 8 C^2 of MLP per block),
    /// forward (2 FLOPs per weight) plus backward (4).
    public var layerFLOPsPerToken: Double {
        let c = Double(nEmbd), l = Double(nLayer)
        return 6 * 12 * l * c * c
    }

    /// 6 V C: the tied head's matrix, forward plus backward.
    public var headFLOPsPerRow: Double { 6 * Double(vocabSize) * Double(nEmbd) }

    /// Forward plus backward FLOPs of one (query, key) pair that attention computes: 12 C L.
    public var flopsPerAttentionPair: Double { 12 * Double(nEmbd) * Double(nLayer) }

    public var shapeSummary: String { "V=\(vocabSize) P=\(nPositions) C=\(nEmbd) L=\(nLayer) NH=\(nHead)" }

    public func makeModel() throws(ModelError) -> any LanguageModel { try GPT2(config: self) }

    // MARK: - config.json

    /// The Hugging Face `config.json` object for this model.
    public func huggingFaceJSON() -> JSON {
        var m: [(String, JSON)] = [
            ("model_type", "gpt2"), ("architectures", ["GPT2LMHeadModel"]),
            ("vocab_size", JSON(vocabSize)), ("n_positions", JSON(nPositions)), ("n_ctx", JSON(nPositions)),
            ("n_embd", JSON(nEmbd)), ("n_layer", JSON(nLayer)), ("n_head", JSON(nHead)), ("n_inner", .null),
            ("activation_function", "gelu_new"), ("layer_norm_epsilon", 1e-5),
            ("tie_word_embeddings", true), ("resid_pdrop", 0.0), ("embd_pdrop", 0.0), ("attn_pdrop", 0.0),
            ("initializer_range", 0.02), ("scale_attn_weights", true), ("use_cache", true),
            ("torch_dtype", "float32"),
        ]
        if let bosTokenId { m.append(("bos_token_id", JSON(bosTokenId))) }
        if let eosTokenId { m.append(("eos_token_id", JSON(eosTokenId))) }
        if let sepTokenId { m.append(("sep_token_id", JSON(sepTokenId))) }
        if let padTokenId { m.append(("pad_token_id", JSON(padTokenId))) }
        return .object(m)
    }

    /// Reads a Hugging Face GPT-2 `config.json`, rejecting architectures kat-dist does not
    /// compute exactly (another activation, another epsilon, untied embeddings, n_inner != 4C).
    public static func fromHuggingFaceJSON(_ text: String, source: String) throws(ModelError) -> GPT2Config {
        let d: JSON
        do { d = try JSON.parse(text) } catch {
            throw .badConfig(source: source, key: "", reason: "not valid JSON (\(error))")
        }
        guard d.objectMembers != nil else { throw .badConfig(source: source, key: "", reason: "not a JSON object") }
        func int(_ key: String, required: Bool = true) throws(ModelError) -> Int? {
            guard let v = d[key], !v.isNull else {
                if required { throw .badConfig(source: source, key: key, reason: "missing") }
                return nil
            }
            guard let n = v.intValue else { throw .badConfig(source: source, key: key, reason: "must be an integer, got \(v.serialized)") }
            return n
        }
        if let mt = d["model_type"], mt != "gpt2" {
            throw .badConfig(source: source, key: "model_type", reason: "must be \"gpt2\", got \(mt.serialized)")
        }
        if let act = d["activation_function"], act != "gelu_new", act != "gelu_pytorch_tanh" {
            throw .badConfig(source: source, key: "activation_function", reason: "only gelu_new (tanh GELU) is supported, got \(act.serialized)")
        }
        if let eps = d["layer_norm_epsilon"], abs((eps.doubleValue ?? .nan) - 1e-5) > 1e-12 || eps.doubleValue == nil {
            throw .badConfig(source: source, key: "layer_norm_epsilon", reason: "only 1e-5 is supported, got \(eps.serialized)")
        }
        if let tie = d["tie_word_embeddings"], tie != .bool(true) {
            throw .badConfig(source: source, key: "tie_word_embeddings", reason: "kat-dist ties the output head to wte; only true is supported")
        }
        if let v = d["scale_attn_weights"], v != .bool(true) {
            throw .badConfig(source: source, key: "scale_attn_weights", reason: "only true is supported")
        }
        for key in ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"] {
            if let v = d[key], v != .bool(false) { throw .badConfig(source: source, key: key, reason: "only false is supported") }
        }
        let c = try int("n_embd") ?? 0
        if let inner = try int("n_inner", required: false), inner != 4 * c {
            throw .badConfig(source: source, key: "n_inner", reason: "only 4 * n_embd (\(4 * c)) is supported, got \(inner)")
        }
        var cfg = GPT2Config(vocabSize: try int("vocab_size") ?? 0, nPositions: try int("n_positions") ?? 0,
                             nEmbd: c, nLayer: try int("n_layer") ?? 0, nHead: try int("n_head") ?? 0,
                             bosTokenId: nil, eosTokenId: nil, sepTokenId: nil, padTokenId: nil)
        cfg.bosTokenId = try int("bos_token_id", required: false)
        cfg.eosTokenId = try int("eos_token_id", required: false)
        cfg.sepTokenId = try int("sep_token_id", required: false)
        cfg.padTokenId = try int("pad_token_id", required: false)
        try cfg.validate(source: source)
        return cfg
    }
}
