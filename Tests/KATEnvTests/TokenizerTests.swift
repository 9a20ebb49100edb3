import Foundation
import XCTest
@testable import KATEnv
import KATSupport

/// Fixtures made by `Fixtures/make_tokenizers.py` with Hugging Face `tokenizers`.
let tokenizerFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("Fixtures/tokenizers").path

func fixtureJSON(_ name: String) throws -> JSON {
    try JSON.parse(Array(try Data(contentsOf: URL(fileURLWithPath: tokenizerFixtures + "/" + name))))
}

/// The awkward corpus, one text a line.
func fixtureCorpus() throws -> [String] {
    let data = try Data(contentsOf: URL(fileURLWithPath: tokenizerFixtures + "/corpus.jsonl"))
    return try data.split(separator: 0x0A).map { line in try XCTUnwrap(try JSON.parse(Array(line))["text"]?.stringValue) }
}

func ints(_ j: JSON?) -> [Int32] { j?.arrayValue?.compactMap { $0.intValue.map(Int32.init) } ?? [] }

final class TokenizerTests: XCTestCase {
    static let names = ["gpt2-json", "gpt2-files", "gpt2-prefix", "qwen2", "llama3", "task"]

    /// Every fixture tokenizer (both file formats, GPT-2's pattern, the Qwen2 and Llama 3
    /// Split patterns, prefix spaces, added tokens with lstrip/rstrip/single_word, NFC,
    /// ignore_merges) encodes each line of the awkward corpus to Hugging Face's ids, and
    /// decodes them to Hugging Face's text, with and without special tokens.
    func testEncodingAndDecodingEqualHuggingFace() throws {
        let corpus = try fixtureCorpus()
        let expected = try fixtureJSON("expected.json")
        for name in TokenizerTests.names {
            let t = try TokenizerLoader.load(directory: tokenizerFixtures + "/" + name)
            XCTAssertTrue(t is BPETokenizer, name)
            let e = try XCTUnwrap(expected[name])
            XCTAssertEqual(t.vocabularySize, e["vocab_size"]?.intValue, name)
            let enc = try XCTUnwrap(e["encode"]?.arrayValue), dec = try XCTUnwrap(e["decode"]?.arrayValue)
            let skip = try XCTUnwrap(e["decode_skip"]?.arrayValue)
            XCTAssertEqual(enc.count, corpus.count)
            for (k, text) in corpus.enumerated() {
                let want = ints(enc[k])
                XCTAssertEqual(t.encode(text), want, "\(name): encode \(text.debugDescription)")
                XCTAssertEqual(t.decode(want, skipSpecialTokens: false), dec[k].stringValue, "\(name): decode line \(k + 1)")
                XCTAssertEqual(t.decode(want, skipSpecialTokens: true), skip[k].stringValue, "\(name): decode line \(k + 1) skipping specials")
            }
        }
    }

    /// Id sequences that make invalid UTF-8, hold special tokens or ids the tokenizer does
    /// not know decode to Hugging Face's text (one U+FFFD per maximal invalid subsequence).
    func testDecodingArbitraryIDsEqualsHuggingFace() throws {
        let expected = try fixtureJSON("expected.json")
        for name in TokenizerTests.names {
            let t = try TokenizerLoader.load(directory: tokenizerFixtures + "/" + name)
            for c in expected[name]?["random_decode"]?.arrayValue ?? [] {
                let ids = ints(c["ids"])
                XCTAssertEqual(t.decode(ids, skipSpecialTokens: false), c["text"]?.stringValue, "\(name): \(ids)")
                XCTAssertEqual(t.decode(ids, skipSpecialTokens: true), c["text_skip"]?.stringValue, "\(name): \(ids) skipping specials")
            }
        }
    }

    /// The pre-tokenizer alone cuts each corpus line into Hugging Face's pieces.
    func testPreTokenizerPiecesEqualHuggingFace() throws {
        let corpus = try fixtureCorpus()
        let expected = try fixtureJSON("expected.json")
        for name in ["gpt2-json", "gpt2-prefix", "qwen2", "llama3"] {
            let t = try XCTUnwrap(try TokenizerLoader.load(directory: tokenizerFixtures + "/" + name) as? BPETokenizer)
            for (k, text) in corpus.enumerated() {
                var pieces = text.isEmpty ? [] : [text]
                for step in t.steps { pieces = step.apply(pieces) }
                let byteLevel = pieces.map { p in String(String.UnicodeScalarView(p.utf8.map { ByteLevel.scalar(of: $0) })) }
                let want = expected[name]?["pieces"]?.arrayValue?[k].arrayValue?.compactMap(\.stringValue) ?? ["?"]
                XCTAssertEqual(byteLevel, want, "\(name): pieces of \(text.debugDescription)")
            }
        }
    }

    /// Every Unicode scalar splits as Hugging Face (Oniguruma) splits it under the GPT-2,
    /// Qwen2 and Llama 3 patterns, in five templates that reveal whether it is `\s`,
    /// `\p{L}`, `\p{N}`, a case variant in `(?i:'s|...)`, or none: the first, middle and
    /// last scalar of every range of scalars that split alike.
    func testSplitPatternsClassifyEveryScalarAsHuggingFace() throws {
        let text = try String(contentsOfFile: tokenizerFixtures + "/pretokenizer_classes.txt", encoding: .utf8)
        let patterns = try [ByteLevel.gpt2Pattern, TokenizerTests.qwen2, TokenizerTests.llama3].map { try SplitPattern(regex: $0) }
        var signatures: [Int: String] = [:]
        var checked = 0
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let f = line.split(separator: " ", maxSplits: 2).map(String.init)
            if f[0] == "sig" { signatures[Int(f[1]) ?? -1] = f.count > 2 ? f[2] : ""; continue }
            guard f.count == 3, let lo = UInt32(f[0], radix: 16), let hi = UInt32(f[1], radix: 16), let k = Int(f[2]),
                  let want = signatures[k] else { return XCTFail("bad line \(line)") }
            for cp in Set([lo, lo + (hi - lo) / 2, hi]) {
                guard let u = Unicode.Scalar(cp) else { continue }
                let c = String(String.UnicodeScalarView([u]))
                var parts: [String] = []
                for p in patterns {
                    for t in [c + c + "a", "1" + c + "1", " " + c, "'" + c + " x", c + "\n"] {
                        parts.append(p.split(t).map { String($0.unicodeScalars.count) }.joined(separator: ","))
                    }
                }
                XCTAssertEqual(parts.joined(separator: "|"), want, String(format: "U+%04X", cp))
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 3000)
    }

    static let qwen2 = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let llama3 = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// Special ids come from config.json first, then from the tokens the tokenizer files
    /// name; without a separator token the separator is "\n" encoded.
    func testSpecialIDsComeFromConfigThenTokenizerFiles() throws {
        let dir = tokenizerFixtures
        let gpt2 = try TokenizerLoader.load(directory: dir + "/gpt2-json")
        let eot = gpt2.encode("<|endoftext|>")
        XCTAssertEqual(eot.count, 1)
        XCTAssertEqual(gpt2.specials.bos, eot[0])
        XCTAssertEqual(gpt2.specials.endTokens, eot)
        XCTAssertEqual(gpt2.specials.separator, gpt2.encode("\n"))
        // GPT-2's two files: <|endoftext|> by default.
        XCTAssertEqual(try TokenizerLoader.load(directory: dir + "/gpt2-files").specials, gpt2.specials)
        // A separator id in config.json.
        let prefix = try TokenizerLoader.load(directory: dir + "/gpt2-prefix")
        XCTAssertEqual(prefix.specials.separator, prefix.encode("<mask>"))
        XCTAssertNil(prefix.specials.bos)
        // Qwen2-style: no BOS (config says null, the tokenizer config too), EOS from config.json
        // although tokenizer_config.json names <|im_end|>.
        let qwen = try TokenizerLoader.load(directory: dir + "/qwen2")
        XCTAssertNil(qwen.specials.bos)
        XCTAssertEqual(qwen.specials.endTokens, qwen.encode("<|endoftext|>"))
        XCTAssertEqual(qwen.specials.pad, qwen.encode("<|endoftext|>").first)
        // Llama 3-style: a list of EOS ids; the one tokenizer_config.json names comes first.
        let llama = try TokenizerLoader.load(directory: dir + "/llama3")
        XCTAssertEqual(llama.specials.endTokens, llama.encode("<|eot_id|>") + llama.encode("<|end_of_text|>"))
        XCTAssertEqual(llama.specials.bos, llama.encode("<|begin_of_text|>").first)
        XCTAssertEqual(llama.stopTokens, Set(llama.specials.endTokens + llama.encode("\n")))
    }

    /// Episodes frame text with the specials, and an answer's text drops its stop token and
    /// any special token.
    func testEpisodeFraming() throws {
        let t = try TokenizerLoader.load(directory: tokenizerFixtures + "/task")
        let eos = try XCTUnwrap(t.specials.eos), bos = try XCTUnwrap(t.specials.bos)
        XCTAssertEqual(t.promptTokens("23+45="), [bos] + t.encode("23+45=") + t.encode("\n"))
        XCTAssertEqual(t.answerTokens("68"), t.encode("68") + [eos])
        XCTAssertEqual(t.observationTokens("wrong"), t.encode("wrong") + t.encode("\n"))
        XCTAssertEqual(t.actionText(t.encode("x 3 *") + [eos]), "x 3 *")
        XCTAssertEqual(t.actionText(t.encode("x 3 *\n")), "x 3 *")
        XCTAssertEqual(t.actionText([eos] + t.encode("x")), "x")
        let b = ByteTokenizer()
        XCTAssertEqual(b.promptTokens("hi"), [256, 104, 105, 258])
        XCTAssertEqual(b.answerTokens("hi"), [104, 105, 257])
        XCTAssertEqual(b.actionText([104, 256, 105, 258]), "hi")
        XCTAssertEqual(b.stopTokens, [257, 258])
    }

    /// kat-dist's byte tokenizer written as Hugging Face files reads back as a tokenizer
    /// that encodes and decodes the corpus exactly as the byte tokenizer does: special-token
    /// text stays bytes, ids 256-259 are BOS, EOS, SEP, PAD.
    func testByteTokenizerFilesReadBackAsTheByteTokenizer() throws {
        let dir = NSTemporaryDirectory() + "byte-tokenizer-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (name, data) in ByteTokenizer.huggingFaceFiles() { try data.write(to: URL(fileURLWithPath: dir + "/" + name)) }
        let read = try TokenizerLoader.load(directory: dir)
        let byte = ByteTokenizer()
        XCTAssertEqual(read.vocabularySize, 260)
        XCTAssertEqual(read.specials, byte.specials)
        for text in try fixtureCorpus() + ["<|eos|> <|bos|>", "\u{FFFD}"] {
            XCTAssertEqual(read.encode(text), byte.encode(text), text.debugDescription)
            XCTAssertEqual(read.encode(text), text.utf8.map { Int32($0) })
        }
        var rng = SplitMix64(seed: 5)
        for _ in 0..<200 {
            let ids = (0..<Int(rng.next() % 12)).map { _ in Int32(rng.next() % 262) }
            XCTAssertEqual(read.decode(ids, skipSpecialTokens: false), byte.decode(ids, skipSpecialTokens: false), "\(ids)")
            XCTAssertEqual(read.decode(ids, skipSpecialTokens: true), byte.decode(ids, skipSpecialTokens: true), "\(ids)")
        }
    }

    /// A directory without tokenizer files gets the byte tokenizer, unless its config.json
    /// names special ids the byte tokenizer does not have (a model whose tokenizer files
    /// were left behind).
    func testDirectoryWithoutTokenizerFiles() throws {
        let dir = NSTemporaryDirectory() + "no-tokenizer-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        XCTAssertTrue(try TokenizerLoader.load(directory: dir) is ByteTokenizer)
        try Data(#"{"vocab_size": 260, "bos_token_id": 256, "eos_token_id": 257}"#.utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        XCTAssertTrue(try TokenizerLoader.load(directory: dir) is ByteTokenizer)
        XCTAssertEqual(TokenizerLoader.checkpointFiles(directory: dir, vocabSize: 260).keys.sorted(),
                       ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"])
        try Data(#"{"vocab_size": 50257, "bos_token_id": 50256, "eos_token_id": 50256}"#.utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        XCTAssertThrowsError(try TokenizerLoader.load(directory: dir)) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains("config.json") && m.contains("bos_token_id") && m.contains("50256") && m.contains("no tokenizer files"), m)
        }
        XCTAssertTrue(TokenizerLoader.checkpointFiles(directory: dir, vocabSize: 50257).isEmpty)
    }

    /// A model whose vocab_size does not cover the tokenizer is refused, naming both.
    func testModelVocabularyMustCoverTheTokenizer() throws {
        let t = try TokenizerLoader.load(directory: tokenizerFixtures + "/qwen2")
        XCTAssertNoThrow(try t.check(fitsVocabularySize: 420, model: "m"))
        XCTAssertNoThrow(try t.check(fitsVocabularySize: 512, model: "m"))
        XCTAssertThrowsError(try t.check(fitsVocabularySize: 419, model: "model DIR")) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains("model DIR has vocab_size 419") && m.contains("qwen2/tokenizer.json") && m.contains("419"), m)
        }
        XCTAssertThrowsError(try ByteTokenizer().check(fitsVocabularySize: 256, model: "model.vocab_size")) { e in
            XCTAssertTrue("\(e)".contains("vocab_size 256") && "\(e)".contains("byte tokenizer") && "\(e)".contains("259"), "\(e)")
        }
    }

    /// Faults in tokenizer files are errors naming the file and the fault.
    func testTokenizerFileFaultsNameTheFileAndTheFault() throws {
        let base = try String(contentsOfFile: tokenizerFixtures + "/gpt2-json/tokenizer.json", encoding: .utf8)
        func withTokenizer(_ text: String, file: String = "tokenizer.json", expect parts: [String], line: UInt = #line) throws {
            let dir = NSTemporaryDirectory() + "bad-tokenizer-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/" + file))
            XCTAssertThrowsError(try TokenizerLoader.load(directory: dir), line: line) { e in
                let m = "\(e)"
                XCTAssertTrue(m.contains(dir + "/"), m, line: line)
                for p in parts { XCTAssertTrue(m.contains(p), "\(m) lacks \(p)", line: line) }
            }
        }
        try withTokenizer("{not json", expect: ["tokenizer.json", "not valid JSON"])
        try withTokenizer(base.replacingOccurrences(of: #""type": "BPE""#, with: #""type": "Unigram""#), expect: ["model type Unigram"])
        try withTokenizer(base.replacingOccurrences(of: #""type": "ByteLevel","#, with: #""type": "Metaspace","#), expect: ["pre_tokenizer Metaspace"])
        try withTokenizer(base.replacingOccurrences(of: #""normalizer": null"#, with: #""normalizer": {"type": "Lowercase"}"#), expect: ["normalizer Lowercase"])
        try withTokenizer(base.replacingOccurrences(of: #""merges": ["#, with: #""merges": [["Ġ", "nonexistent"], "#), expect: ["merge 1", "not in the vocabulary"])
        try withTokenizer("{}", file: "vocab.json", expect: ["merges.txt", "missing"])
        try withTokenizer("x", file: "tokenizer.model", expect: ["SentencePiece"])
    }
}
