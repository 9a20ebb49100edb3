import KATSupport

/// The model families kat-dist computes, named by their Hugging Face `model_type`.
public enum ModelFamily: String, Sendable, CaseIterable {
    /// GPT-2: learned positions, LayerNorm, GELU MLP, tied head (`GPT2`).
    case gpt2
    /// Llama: RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention (`Llama`).
    case llama
    /// Qwen2: Llama with biases on the q, k and v projections (`Llama`).
    case qwen2
}

/// The hyper-parameters of a model of any family, as its `config.json` gives them.
///
/// `nPositions` is the longest root path a row may have (GPT-2's `n_positions`, Llama's
/// `max_position_embeddings`); `nEmbd` is the residual width C (`hidden_size`).
public protocol ModelConfiguration: Sendable {
    var family: ModelFamily { get }
    var vocabSize: Int { get }
    var nPositions: Int { get }
    var nEmbd: Int { get }
    var nLayer: Int { get }
    var nHead: Int { get }
    var bosTokenId: Int? { get }
    var eosTokenId: Int? { get }
    var sepTokenId: Int? { get }
    var padTokenId: Int? { get }
    /// Number of float parameters.
    var parameterCount: Int { get }
    /// Floats of keys (and as many of values) one row keeps per layer in a KV cache.
    var keyValueWidth: Int { get }
    /// Forward plus backward FLOPs of the layers (not the head, not attention pairs) for one
    /// computed token: 6 x the parameters of the layers.
    var layerFLOPsPerToken: Double { get }
    /// Forward plus backward FLOPs of the output head for one row whose next-token
    /// distribution is computed: 6 V C.
    var headFLOPsPerRow: Double { get }
    /// Forward plus backward FLOPs of one (query, key) pair that attention computes:
    /// 12 x (query width) x L (the query width is C for every model kat-dist initialises).
    var flopsPerAttentionPair: Double { get }
    /// The hyper-parameters that fix the parameter layout, in one line (`gpt2 V=260 ...`).
    var shapeSummary: String { get }
    /// Checks the hyper-parameters; the message names the offending key of `config.json`.
    func validate(source: String) throws(ModelError)
    /// The Hugging Face `config.json` object of this model.
    func huggingFaceJSON() -> JSON
    /// A model of this shape with every parameter zero (see `LanguageModel.initialize`).
    func makeModel() throws(ModelError) -> any LanguageModel
}

extension ModelConfiguration {
    /// Forward plus backward FLOPs of a training pass over a packed batch: the layers for
    /// every row, the head for every row with children, and every (query, key) pair.
    public func trainingFLOPs(_ batch: PackedBatch) -> Double {
        Double(batch.count) * layerFLOPsPerToken + Double(batch.headRows.count) * headFLOPsPerRow
            + Double(batch.attentionPairs) * flopsPerAttentionPair
    }
}

/// Reads a Hugging Face `config.json` of any supported family, chosen by `model_type`
/// (`gpt2` when the key is absent, as in the earliest GPT-2 configs).
/// - Throws: `ModelError.badConfig` naming `model_type` for another family, or the key at
///   fault in the family's own checks.
public func modelConfiguration(fromHuggingFaceJSON text: String, source: String) throws(ModelError) -> any ModelConfiguration {
    let d: JSON
    do { d = try JSON.parse(text) } catch {
        throw .badConfig(source: source, key: "", reason: "not valid JSON (\(error))")
    }
    guard d.objectMembers != nil else { throw .badConfig(source: source, key: "", reason: "not a JSON object") }
    let type = d["model_type"]
    if type == nil || type == "gpt2" { return try GPT2Config.fromHuggingFaceJSON(text, source: source) }
    if let name = type?.stringValue, let family = ModelFamily(rawValue: name) {
        return try LlamaConfig.fromHuggingFaceJSON(d, family: family, source: source)
    }
    let names = ModelFamily.allCases.map(\.rawValue).joined(separator: ", ")
    throw .badConfig(source: source, key: "model_type", reason: "must be one of \(names), got \(type?.serialized ?? "nothing")")
}

/// Where a model's parameters live in its one contiguous float buffer: named tensors in
/// buffer order. Gradients and both Adam moments use the same table.
public protocol ParameterTable: Sendable {
    var tensors: [TensorSpec] { get }
    /// Total floats.
    var count: Int { get }
    /// Each block's parameters: contiguous, blocks in order, after the embeddings and
    /// before the final norm (and an untied head).
    var layerRanges: [Range<Int>] { get }
    /// The part of each block that backward fills first: its MLP with the norm before it,
    /// a suffix of `layerRanges[l]`.
    var mlpRanges: [Range<Int>] { get }
}

extension ParameterTable {
    public func tensor(named name: String) -> TensorSpec? { tensors.first { $0.name == name } }

    /// The parameters whose gradient is complete for a micro-batch once backward stage
    /// `stage` has run: the final norm (and an untied head) after the head stage, a block's
    /// MLP half after `.mlp`, the whole block after `.layer`, the embeddings (a tied head's
    /// too) only after the last stage.
    public func gradientComplete(after stage: BackwardPass.Stage) -> Range<Int> {
        let tail = layerRanges.last?.upperBound ?? (tensors.last.map { $0.offset } ?? count)
        switch stage {
        case .head: return tail..<count
        case let .mlp(l): return mlpRanges[l]
        case let .layer(l): return layerRanges[l]
        case .embeddings: return 0..<(layerRanges.first?.lowerBound ?? tail)
        }
    }
}

/// A causal language model in float32 over packed batches, with an exact backward pass.
///
/// Every family keeps all its parameters in one buffer (`params`, laid out by `layout`)
/// and its gradient in another of the same layout (`grads`). `forward` keeps the
/// activations of its batch; the backward pass that follows must be of the same batch.
/// A class: identity is the point (the weights are shared by the sampler, the trainer and
/// the weight sync). `Sendable` because one thread uses a model at a time.
public protocol LanguageModel: AnyObject, Sendable {
    associatedtype Config: ModelConfiguration
    associatedtype Layout: ParameterTable
    var config: Config { get }
    var layout: Layout { get }
    var params: FloatBuffer { get }
    var grads: FloatBuffer { get }
    /// The family's initialisation from a seed.
    func initialize(seed: UInt64)
    func zeroGrad()
    /// Bytes held by the activation workspace.
    var workspaceBytes: Int { get }
    /// Drops the activation workspace (the next forward reallocates it).
    func releaseWorkspace()
    /// Whether `forward` keeps the head's logits for backward when they take no more memory
    /// than the activations (saving backward one of the head's four sgemms). True by
    /// default; callers that never run backward (scoring, reference models) turn it off so
    /// that a forward never holds the logits of its batch.
    var keepsHeadLogits: Bool { get set }
    /// Called by `forward` after each block (nil: nothing), for work that must not wait for
    /// the whole pass, such as letting a network transfer progress.
    var betweenForwardBlocks: (() -> Void)? { get set }
    /// Runs the model over a packed batch and scores every row from its parent's output at
    /// temperature `temperature`: pi_tau = softmax(logits / tau).
    @discardableResult
    func forward(_ batch: PackedBatch, temperature: Float) -> ForwardResult
    /// Logits (before temperature) of the given rows of the last forward pass.   (rows, V)
    func logits(rows: [Int]) -> [[Float]]
    /// Starts the backward pass of the last forward; the caller steps it (head, layers
    /// last to first, embeddings). Gradients accumulate (`+=`) into `grads`.
    /// - Parameter dlogprobs: dL/dl per row of the last batch. (N)
    func beginBackward(dlogprobs: [Float]) -> BackwardPass
    /// The family's half of `KVCache.extend`: runs the rows `newRows` (already appended to
    /// the cache, their slots and key runs planned) through the model, stores their keys and
    /// values, and writes the final norm's output of `outputs` (indices into `newRows`) to
    /// the cache's hidden buffer, (outputs.count, C); the cache runs the output head.
    /// - Returns: the head matrix (V, C).
    func cachedForward(_ cache: KVCache, newRows: Range<Int>, outputs: [Int]) -> UnsafeMutablePointer<Float>
}

extension LanguageModel {
    /// `forward` at temperature 1.
    @discardableResult
    public func forward(_ batch: PackedBatch) -> ForwardResult { forward(batch, temperature: 1) }

    /// Accumulates into `grads` the gradient of a loss whose derivative with respect to
    /// each row's log-prob is `dlogprobs[u]` (0 at roots and rows without loss).
    public func backward(dlogprobs: [Float]) { beginBackward(dlogprobs: dlogprobs).finish() }
}

// MARK: - Staged backward

/// The stages a family's backward pass is made of, run by `BackwardPass`.
protocol BackwardStages: AnyObject {
    var stageLayerCount: Int { get }
    /// Output head and final norm: leaves d(last residual) in the family's scratch.
    func backwardHead(_ dlogprobs: [Float])
    /// Block `l`'s MLP half (with the norm before it): d(block output) on entry, d(the
    /// residual between the halves) on exit.
    func backwardMLP(_ l: Int)
    /// Block `l`'s attention half (with the norm before it): d(the residual between the
    /// halves) on entry, d(block input) on exit.
    func backwardAttention(_ l: Int)
    /// Token (and position) embeddings.
    func backwardEmbeddings()
}

/// A backward pass run one stage at a time: the output head (with the final norm), then
/// each block from the last to the first in two halves (its MLP, `.mlp(l)`, then its
/// attention, `.layer(l)`), then the embeddings. After `.mlp(l)` the gradients of block l's
/// MLP half are complete for this micro-batch, after `.layer(l)` those of the whole block;
/// the token embedding's gradient is complete only after `.embeddings` (a tied head writes
/// it first). Halves let gradient buckets start sooner (`comm.overlap`).
public final class BackwardPass {
    public enum Stage: Equatable, Sendable { case head, mlp(Int), layer(Int), embeddings }
    let model: any BackwardStages
    let dlogprobs: [Float]
    /// The stage `step()` runs next; nil when the pass is done.
    public private(set) var next: Stage? = .head

    init(model: any BackwardStages, dlogprobs: [Float]) { self.model = model; self.dlogprobs = dlogprobs }

    /// Runs the next stage and returns it; nil when the pass was already done.
    @discardableResult
    public func step() -> Stage? {
        guard let stage = next else { return nil }
        let layers = model.stageLayerCount
        switch stage {
        case .head:
            model.backwardHead(dlogprobs)
            next = layers > 0 ? .mlp(layers - 1) : .embeddings
        case let .mlp(l):
            model.backwardMLP(l)
            next = .layer(l)
        case let .layer(l):
            model.backwardAttention(l)
            next = l > 0 ? .mlp(l - 1) : .embeddings
        case .embeddings:
            model.backwardEmbeddings()
            next = nil
        }
        return stage
    }

    /// Runs every stage left.
    public func finish() { while step() != nil {} }
}
