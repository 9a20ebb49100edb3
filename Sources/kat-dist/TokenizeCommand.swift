import Foundation
import KATDist
import KATEnv
import KATSupport

/// `kat-dist tokenize`: text to token ids with a model directory's tokenizer, and back.
enum TokenizeCommand {
    static let usage = """
    Usage: kat-dist tokenize --model DIR --input FILE.jsonl [--output FILE] [--decode] [--skip-special-tokens]

    Maps each line {"text": "..."} to {"tokens": [...]} with the tokenizer of the model
    directory (tokenizer.json, or vocab.json and merges.txt, else kat-dist's byte
    tokenizer); the line's other fields are kept. No BOS or EOS is added; special-token
    text in the input becomes that token where the tokenizer's files say so. With
    --decode, maps {"tokens": [...]} to {"text": "..."}.

    Options:
      --model DIR              model directory (a checkpoint, a run directory or its latest
                               file work): its tokenizer files and
                               config.json (vocab_size, special ids)
      --input FILE             JSON Lines
      --output FILE            where to write (default: standard output); written whole or not at all
      --decode                 token ids to text
      --skip-special-tokens    with --decode: leave special tokens out of the text
    """

    static func run(_ args: [String]) throws {
        let specs = [OptionSpec(name: "model", takesValue: true), OptionSpec(name: "input", takesValue: true),
                     OptionSpec(name: "output", takesValue: true), OptionSpec(name: "decode", takesValue: false),
                     OptionSpec(name: "skip-special-tokens", takesValue: false)]
        let a = try ParsedArguments.parse(args, specs: specs, command: "tokenize")
        if a.has("help") { print(usage); return }
        let given = try a.required("model", command: "tokenize")
        // A run directory or a `latest` file stands for its newest checkpoint, as everywhere.
        let dir: String
        do { dir = try Checkpoint.resolveModelDirectory(given) } catch { throw CommandFailure(description: "\(error)") }
        let input = try a.required("input", command: "tokenize")
        let output = try checkedOutputOption(a, command: "tokenize")
        let decode = a.has("decode")
        if a.has("skip-special-tokens") && !decode {
            throw UsageError(description: "kat-dist tokenize: --skip-special-tokens applies to --decode only")
        }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw UsageError(description: "kat-dist tokenize: --model \(dir): no such directory")
        }
        guard let data = FileManager.default.contents(atPath: input) else {
            throw UsageError(description: "kat-dist tokenize: --input \(input): " + (FileManager.default.fileExists(atPath: input) ? "cannot read the file" : "no such file"))
        }
        let tokenizer: any Tokenizer, vocabSize: Int
        do {
            vocabSize = try TokenizerLoader.modelVocabularySize(directory: dir)
            tokenizer = try TokenizerLoader.load(directory: dir)
            try tokenizer.check(fitsVocabularySize: vocabSize, model: "the model \(dir)")
        } catch { throw CommandFailure(description: "\(error)") }

        var out = ""
        var lineNo = 0
        for raw in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNo += 1
            if raw.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            func bad(_ field: String, _ why: String) -> CommandFailure {
                CommandFailure(description: "\(input):\(lineNo): \(field.isEmpty ? "" : "field \(field): ")\(why)")
            }
            let obj: JSON
            do { obj = try JSON.parse(Array(raw)) } catch { throw bad("", "not valid JSON (\(error))") }
            guard let members = obj.objectMembers else { throw bad("", "a line must be a JSON object") }
            var result: [(String, JSON)] = []
            if decode {
                guard let toks = obj["tokens"] else { throw bad("tokens", "missing") }
                guard let arr = toks.arrayValue else { throw bad("tokens", "must be an array of token ids, got \(toks.typeName)") }
                var ids: [Int32] = []
                for (k, t) in arr.enumerated() {
                    guard case let .int(v) = t else { throw bad("tokens", "entry \(k) must be an integer, got \(t.typeName)") }
                    guard v >= 0, v < vocabSize else { throw bad("tokens", "entry \(k) = \(v) is outside the vocabulary (0..<\(vocabSize))") }
                    ids.append(Int32(v))
                }
                let text = tokenizer.decode(ids, skipSpecialTokens: a.has("skip-special-tokens"))
                for (k, v) in members { result.append(k == "tokens" ? ("text", .string(text)) : (k, v)) }
            } else {
                guard let t = obj["text"] else { throw bad("text", "missing") }
                guard let text = t.stringValue else { throw bad("text", "must be a string, got \(t.typeName)") }
                let ids = tokenizer.encode(text).map { JSON(Int($0)) }
                for (k, v) in members { result.append(k == "text" ? ("tokens", .array(ids)) : (k, v)) }
            }
            out += JSON.object(result).serialized + "\n"
        }
        if let path = output {
            do { try FileWriting.writeAtomically(Data(out.utf8), to: path) } catch { throw CommandFailure(description: "\(error)") }
        } else {
            FileHandle.standardOutput.write(Data(out.utf8))
        }
    }
}
