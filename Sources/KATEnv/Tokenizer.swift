import Foundation

/// Text to token ids and back, with the special ids that frame an episode.
///
/// Two kinds exist: kat-dist's `ByteTokenizer` (ids 0-255 are bytes, then BOS, EOS, SEP,
/// PAD) and `BPETokenizer`, a byte-level BPE read from a Hugging Face `tokenizer.json` or
/// from GPT-2's `vocab.json` + `merges.txt` (see `TokenizerLoader`). Both encode and
/// decode exactly as the Hugging Face `tokenizers` library does with the same files.
public protocol Tokenizer: Sendable {
    /// One more than the largest id the tokenizer produces or decodes: a model's
    /// `vocab_size` must be at least this.
    var vocabularySize: Int { get }
    /// BOS, EOS and the turn separator.
    var specials: SpecialTokens { get }
    /// What the tokenizer is and where it came from, for messages
    /// ("byte-level BPE from DIR/tokenizer.json").
    var origin: String { get }
    /// The ids of `text`, with no special tokens added around it (Hugging Face's
    /// `encode(text, add_special_tokens=False)`). Special-token text inside `text` becomes
    /// that token where the tokenizer's files say so.
    func encode(_ text: String) -> [Int32]
    /// The text of `tokens`; ids the tokenizer does not know are left out, invalid UTF-8
    /// becomes U+FFFD (one per maximal invalid subsequence).
    /// - Parameter skipSpecialTokens: leave out special tokens instead of writing their text.
    func decode(_ tokens: [Int32], skipSpecialTokens: Bool) -> String
}

/// The special ids of a tokenizer. The separator is a sequence: without a separator token
/// it is the text "\n" encoded, which may take several tokens.
public struct SpecialTokens: Sendable, Equatable {
    /// Begin of sequence, written before a prompt when there is one.
    public var bos: Int32?
    /// Ids that end a sequence; the first is the one written after a demonstration's
    /// answer (several when a config lists several `eos_token_id`s).
    public var endTokens: [Int32]
    /// Written between turns (after a prompt and after each observation).
    public var separator: [Int32]
    public var pad: Int32?

    public init(bos: Int32?, endTokens: [Int32], separator: [Int32], pad: Int32?) {
        self.bos = bos
        self.endTokens = endTokens
        self.separator = separator
        self.pad = pad
    }

    /// The end-of-sequence id written after an answer.
    public var eos: Int32? { endTokens.first }
}

// MARK: - Episodes

/// How episodes turn text into tokens with a tokenizer: a prompt is BOS (when the
/// tokenizer has one), its text and the separator; an answer ends with EOS; an observation
/// between turns is its text and the separator. Sampling stops at EOS and at a separator
/// of one token (a separator of several tokens does not stop sampling: EOS does).
extension Tokenizer {
    /// BOS (when there is one), the prompt's ids, the separator.
    public func promptTokens(_ text: String) -> [Int32] {
        (specials.bos.map { [$0] } ?? []) + encode(text) + specials.separator
    }

    /// The answer's ids and EOS: a complete demonstration answer.
    public func answerTokens(_ text: String) -> [Int32] { encode(text) + (specials.eos.map { [$0] } ?? []) }

    /// An environment's reply between turns: its ids and the separator.
    public func observationTokens(_ text: String) -> [Int32] { encode(text) + specials.separator }

    /// Ids that end a sampled answer: every end token and a one-token separator.
    public var stopTokens: Set<Int32> {
        Set(specials.endTokens).union(specials.separator.count == 1 ? specials.separator : [])
    }

    /// The text of a sampled answer, as an environment receives it: a final stop token is
    /// dropped and special tokens are skipped.
    public func actionText(_ tokens: [Int32]) -> String {
        var t = tokens
        if let last = t.last, stopTokens.contains(last) { t.removeLast() }
        return decode(t, skipSpecialTokens: true)
    }

    /// Checks that episodes can be framed: an end token and a non-empty separator.
    /// - Throws: `TokenizerError.missingSpecial` naming what is missing.
    public func checkEpisodeSpecials() throws(TokenizerError) {
        if specials.endTokens.isEmpty {
            throw .missingSpecial(origin: origin, token: "EOS", how: "set eos_token_id in config.json or eos_token in tokenizer_config.json")
        }
        if specials.separator.isEmpty {
            throw .missingSpecial(origin: origin, token: "separator", how: "the text \"\\n\" encodes to no token: set sep_token_id in config.json or sep_token in tokenizer_config.json")
        }
    }

    /// Checks that a model of `vocabSize` ids covers every id of the tokenizer.
    /// - Parameter model: the model, for the message (its directory, or "the configured model").
    /// - Throws: `TokenizerError.vocabularyTooSmall` naming both.
    public func check(fitsVocabularySize vocabSize: Int, model: String) throws(TokenizerError) {
        if vocabularySize > vocabSize {
            throw .vocabularyTooSmall(model: model, vocabSize: vocabSize, tokenizer: origin, tokenizerSize: vocabularySize)
        }
    }
}

// MARK: - Errors

/// A fault of a tokenizer or its files; each case names the file (or tokenizer) and what
/// is wrong.
public enum TokenizerError: Error, CustomStringConvertible, Equatable {
    /// A file that cannot be read, is not JSON or not of the expected shape.
    case badFile(path: String, reason: String)
    /// A component kat-dist does not implement (another model type, pre-tokenizer,
    /// normalizer or decoder).
    case unsupported(path: String, component: String, reason: String)
    /// A special token the files name that the vocabulary lacks, or ids that disagree.
    case badSpecial(path: String, key: String, reason: String)
    /// Episodes need a special token the tokenizer lacks.
    case missingSpecial(origin: String, token: String, how: String)
    /// A model whose vocabulary does not cover the tokenizer's ids.
    case vocabularyTooSmall(model: String, vocabSize: Int, tokenizer: String, tokenizerSize: Int)

    public var description: String {
        switch self {
        case let .badFile(path, reason): return "\(path): \(reason)"
        case let .unsupported(path, component, reason): return "\(path): \(component): \(reason)"
        case let .badSpecial(path, key, reason): return "\(path): \(key): \(reason)"
        case let .missingSpecial(origin, token, how): return "\(origin) has no \(token) token (\(how))"
        case let .vocabularyTooSmall(model, vocabSize, tokenizer, size):
            return "\(model) has vocab_size \(vocabSize), but its tokenizer (\(tokenizer)) uses ids up to \(size - 1): the model's vocabulary must cover every tokenizer id (vocab_size >= \(size))"
        }
    }
}
