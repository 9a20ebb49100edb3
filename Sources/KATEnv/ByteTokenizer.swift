import Foundation

/// The byte tokenizer: ids 0-255 are bytes, then BOS 256, EOS 257, SEP 258, PAD 259
/// (Docs/formats.md).
public enum ByteTokenizer {
    public static let bos: Int32 = 256, eos: Int32 = 257, sep: Int32 = 258, pad: Int32 = 259
    public static func encode(_ text: String) -> [Int32] { text.utf8.map { Int32($0) } }
    /// Bytes only (special tokens dropped), decoded as UTF-8 with replacement.
    public static func decode(_ tokens: [Int32]) -> String {
        String(decoding: tokens.filter { $0 >= 0 && $0 < 256 }.map { UInt8($0) }, as: UTF8.self)
    }
}
