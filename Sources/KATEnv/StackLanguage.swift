/// A small stack language for the built-in code task, and its sandboxed interpreter.
///
/// A program is words separated by spaces, run on a stack of 64-bit integers:
///
///     123         push a number            x        push the input
///     + - * / %   pop b, pop a, push a op b (division by zero is an error)
///     dup swap drop over                    stack shuffles
///     .           pop and print
///     [ ... ]     loop: pop c; if c is 0 skip past ], else run the body and return to [
///     : f ... ;   define word f (recursion allowed); f calls it
///
/// The result is the top of the stack at the end. The sandbox bounds steps, stack depth
/// (memory), printed output, call depth and program length; exceeding any bound, or any
/// fault, ends the run with an error, never a crash or a hang.
public enum StackLanguage {
    public struct Limits: Sendable {
        public var steps = 4_000
        public var stack = 256
        public var output = 256
        public var callDepth = 64
        public var programBytes = 512
        public init() {}
    }

    public enum Fault: Error, Equatable, CustomStringConvertible {
        case syntax(String), stackUnderflow, stackOverflow, stepLimit, outputLimit, callDepth, divisionByZero, overflow, empty, tooLong
        public var description: String {
            switch self {
            case let .syntax(s): return "syntax error: \(s)"
            case .stackUnderflow: return "stack underflow"
            case .stackOverflow: return "stack limit exceeded"
            case .stepLimit: return "step limit exceeded"
            case .outputLimit: return "output limit exceeded"
            case .callDepth: return "call depth exceeded"
            case .divisionByZero: return "division by zero"
            case .overflow: return "integer overflow"
            case .empty: return "empty stack at the end"
            case .tooLong: return "program too long"
            }
        }
    }

    enum Op: Equatable {
        case push(Int64), input, add, sub, mul, div, mod, dup, swap, drop, over, print
        case loopStart(end: Int), loopEnd(start: Int), call(String)
    }

    /// Parses a program into a main body and word definitions.
    static func compile(_ text: String, limits: Limits) throws(Fault) -> (main: [Op], words: [String: [Op]]) {
        if text.utf8.count > limits.programBytes { throw .tooLong }
        let words = text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).map(String.init)
        var main: [Op] = [], defs: [String: [Op]] = [:]
        var i = 0
        func body(until terminator: String?) throws(Fault) -> [Op] {
            var ops: [Op] = []
            var loops: [Int] = []
            while i < words.count {
                let w = words[i]
                i += 1
                if let t = terminator, w == t {
                    if !loops.isEmpty { throw .syntax("unclosed [") }
                    return ops
                }
                switch w {
                case "x": ops.append(.input)
                case "+": ops.append(.add)
                case "-": ops.append(.sub)
                case "*": ops.append(.mul)
                case "/": ops.append(.div)
                case "%": ops.append(.mod)
                case "dup": ops.append(.dup)
                case "swap": ops.append(.swap)
                case "drop": ops.append(.drop)
                case "over": ops.append(.over)
                case ".": ops.append(.print)
                case "[": loops.append(ops.count); ops.append(.loopStart(end: -1))
                case "]":
                    guard let s = loops.popLast() else { throw .syntax("] without [") }
                    ops[s] = .loopStart(end: ops.count + 1)
                    ops.append(.loopEnd(start: s))
                case ":":
                    guard terminator == nil else { throw .syntax("nested definition") }
                    guard i < words.count else { throw .syntax("definition without a name") }
                    let name = words[i]
                    i += 1
                    guard name.first?.isLetter == true, name != "x", !["dup", "swap", "drop", "over"].contains(name) else {
                        throw .syntax("bad word name \(name)")
                    }
                    defs[name] = try body(until: ";")
                case ";": throw .syntax("; outside a definition")
                default:
                    if let n = Int64(w) { ops.append(.push(n)) }
                    else if w.first?.isLetter == true { ops.append(.call(w)) }
                    else { throw .syntax("unknown word \(w)") }
                }
            }
            if terminator != nil { throw .syntax("definition without ;") }
            if !loops.isEmpty { throw .syntax("unclosed [") }
            return ops
        }
        main = try body(until: nil)
        for ops in [main] + Array(defs.values) {
            for case let .call(name) in ops where defs[name] == nil { throw .syntax("unknown word \(name)") }
        }
        return (main, defs)
    }

    /// Runs a program on input `x`. Returns the result and what it printed.
    public static func run(_ text: String, input x: Int64, limits: Limits = Limits()) -> Result<(value: Int64, output: String), Fault> {
        do {
            let (main, words) = try compile(text, limits: limits)
            var stack: [Int64] = []
            var output = ""
            var steps = 0
            func exec(_ ops: [Op], depth: Int) throws(Fault) {
                if depth > limits.callDepth { throw .callDepth }
                var pc = 0
                while pc < ops.count {
                    steps += 1
                    if steps > limits.steps { throw .stepLimit }
                    func pop() throws(Fault) -> Int64 { guard let v = stack.popLast() else { throw .stackUnderflow }; return v }
                    func push(_ v: Int64) throws(Fault) { if stack.count >= limits.stack { throw .stackOverflow }; stack.append(v) }
                    switch ops[pc] {
                    case let .push(n): try push(n)
                    case .input: try push(x)
                    case .add, .sub, .mul, .div, .mod:
                        let b = try pop(), a = try pop()
                        let r: (Int64, Bool)
                        switch ops[pc] {
                        case .add: r = a.addingReportingOverflow(b)
                        case .sub: r = a.subtractingReportingOverflow(b)
                        case .mul: r = a.multipliedReportingOverflow(by: b)
                        case .div: if b == 0 { throw .divisionByZero }; r = a.dividedReportingOverflow(by: b)
                        default: if b == 0 { throw .divisionByZero }; r = a.remainderReportingOverflow(dividingBy: b)
                        }
                        if r.1 { throw .overflow }
                        try push(r.0)
                    case .dup: let a = try pop(); try push(a); try push(a)
                    case .swap: let b = try pop(), a = try pop(); try push(b); try push(a)
                    case .drop: _ = try pop()
                    case .over: let b = try pop(), a = try pop(); try push(a); try push(b); try push(a)
                    case .print:
                        output += String(try pop()) + " "
                        if output.utf8.count > limits.output { throw .outputLimit }
                    case let .loopStart(end):
                        if try pop() == 0 { pc = end; continue }
                    case let .loopEnd(start): pc = start; continue
                    case let .call(name): try exec(words[name] ?? [], depth: depth + 1)
                    }
                    pc += 1
                }
            }
            try exec(main, depth: 0)
            guard let top = stack.last else { throw Fault.empty }
            return .success((top, output))
        } catch let f as Fault {
            return .failure(f)
        } catch {
            return .failure(.syntax("\(error)"))
        }
    }
}
