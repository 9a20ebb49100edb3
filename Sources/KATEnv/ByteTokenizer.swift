import Foundation
import KATSupport

/// kat-dist's byte tokenizer, the default for a model directory without tokenizer files:
/// ids 0-255 are the UTF-8 bytes of the text, then BOS = 256, EOS = 257, SEP = 258 (the
/// turn separator), PAD = 259; 260 ids in all. Text never encodes to a special id.
public struct ByteTokenizer: Tokenizer {
    public static let bos: Int32 = 256, eos: Int32 = 257, sep: Int32 = 258, pad: Int32 = 259
    /// Ids of the byte tokenizer: 256 bytes and four specials.
    public static let size = 260
    /// The text of each special (256...259) in decoded text and in the Hugging Face files.
    public static let specialTexts = ["<|bos|>", "<|eos|>", "<|sep|>", "<|pad|>"]

    public init() {}

    public var vocabularySize: Int { ByteTokenizer.size }
    public var specials: SpecialTokens {
        SpecialTokens(bos: ByteTokenizer.bos, endTokens: [ByteTokenizer.eos], separator: [ByteTokenizer.sep], pad: ByteTokenizer.pad)
    }
    public var origin: String { "the byte tokenizer" }

    public func encode(_ text: String) -> [Int32] { ByteTokenizer.encode(text) }

    public func decode(_ tokens: [Int32], skipSpecialTokens: Bool) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(tokens.count)
        for t in tokens {
            if t >= 0 && t < 256 { bytes.append(UInt8(t)) } else if !skipSpecialTokens, t >= 256, t < Int32(ByteTokenizer.size) {
                bytes += Array(ByteTokenizer.specialTexts[Int(t) - 256].utf8)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The UTF-8 bytes of `text` as ids.
    public static func encode(_ text: String) -> [Int32] { text.utf8.map { Int32($0) } }
    /// Bytes only (special tokens dropped), decoded as UTF-8 with replacement.
    public static func decode(_ tokens: [Int32]) -> String { ByteTokenizer().decode(tokens, skipSpecialTokens: true) }

    // MARK: - Hugging Face files

    /// `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` that
    /// `transformers.AutoTokenizer.from_pretrained` loads as this tokenizer: a BPE without
    /// merges whose vocabulary is the 256 byte-level symbols in byte order (so byte b has
    /// id b), a ByteLevel pre-tokenizer and decoder, and the four specials as added tokens
    /// 256-259. `split_special_tokens` keeps special-token text in the input as bytes, as
    /// kat-dist encodes it.
    public static func huggingFaceFiles() -> [String: Data] {
        var vocab: [(String, JSON)] = []
        for b in 0..<256 { vocab.append((String(Character(ByteLevel.scalar(of: UInt8(b)))), JSON(b))) }
        let added: [JSON] = specialTexts.enumerated().map { k, text in
            .object([("id", JSON(256 + k)), ("content", .string(text)), ("single_word", false), ("lstrip", false),
                     ("rstrip", false), ("normalized", false), ("special", true)])
        }
        let byteLevel: JSON = .object([("type", "ByteLevel"), ("add_prefix_space", false), ("trim_offsets", true), ("use_regex", false)])
        let tokenizer: JSON = .object([
            ("version", "1.0"), ("truncation", .null), ("padding", .null), ("added_tokens", .array(added)),
            ("normalizer", .null), ("pre_tokenizer", byteLevel), ("post_processor", .null), ("decoder", byteLevel),
            ("model", .object([("type", "BPE"), ("dropout", .null), ("unk_token", .null), ("continuing_subword_prefix", .null),
                               ("end_of_word_suffix", .null), ("fuse_unk", false), ("byte_fallback", false), ("ignore_merges", false),
                               ("vocab", .object(vocab)), ("merges", .array([]))])),
        ])
        let names = ["bos_token", "eos_token", "sep_token", "pad_token"]
        let map: [(String, JSON)] = zip(names, specialTexts).map { ($0, .string($1)) }
        var decoder: [(String, JSON)] = []
        for (k, text) in specialTexts.enumerated() {
            decoder.append((String(256 + k), .object([("content", .string(text)), ("lstrip", false), ("normalized", false),
                                                      ("rstrip", false), ("single_word", false), ("special", true)])))
        }
        let config: JSON = .object([("tokenizer_class", "PreTrainedTokenizerFast"), ("split_special_tokens", true),
                                    ("clean_up_tokenization_spaces", false), ("model_max_length", JSON(1_000_000_000))]
                                   + map + [("added_tokens_decoder", .object(decoder))])
        func data(_ j: JSON) -> Data { Data((j.pretty + "\n").utf8) }
        return ["tokenizer.json": data(tokenizer), "tokenizer_config.json": data(config), "special_tokens_map.json": data(.object(map))]
    }
}
