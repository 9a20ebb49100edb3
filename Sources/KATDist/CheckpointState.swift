import KATSupport

/// The run state a checkpoint holds (state.json), read once with every field checked: a
/// field of the wrong type or out of range is an error naming the file and the field,
/// never a silent default.
struct CheckpointState {
    /// The global step counter.
    var step: Int
    /// The phase and its steps done; older checkpoints give `rl_step` or nothing.
    var phase: Phase?
    var phaseStep: Int?
    var policyVersion: Int
    /// Seconds the run had run.
    var time: Double
    /// The run's settings when the checkpoint was written (newer checkpoints).
    var config: JSON?
    /// The whole object, for the fields each batch source keeps.
    var json: JSON

    init(_ json: JSON, path: String) throws(RunError) {
        self.json = json
        func bad(_ field: String, _ why: String) -> RunError { .checkpoint(path: path, reason: "field \(field): \(why)") }
        func count(_ field: String, required: Bool) throws(RunError) -> Int? {
            guard let v = json[field], !v.isNull else {
                if required { throw bad(field, "missing") }
                return nil
            }
            guard let i = v.intValue, i >= 0 else { throw bad(field, "must be an integer of at least 0, got \(v.serialized)") }
            return i
        }
        guard json.objectMembers != nil else { throw .checkpoint(path: path, reason: "not a JSON object") }
        step = try count("step", required: true) ?? 0
        policyVersion = try count("policy_version", required: true) ?? 0
        if let p = json["phase"], !p.isNull {
            guard let name = p.stringValue, let ph = Phase(rawValue: name) else {
                throw bad("phase", "must be one of \(Phase.allCases.map(\.rawValue).joined(separator: ", ")), got \(p.serialized)")
            }
            phase = ph
            phaseStep = try count("phase_step", required: true)
        } else if let rl = try count("rl_step", required: false) {
            phase = .rl
            phaseStep = rl
        }
        if let t = json["time"], !t.isNull {
            guard let d = t.doubleValue, d.isFinite, d >= 0 else { throw bad("time", "must be a number of seconds, got \(t.serialized)") }
            time = d
        } else {
            time = 0
        }
        config = json["config"]
        if let c = config, c.objectMembers == nil, !c.isNull { throw bad("config", "must be an object") }
    }
}
