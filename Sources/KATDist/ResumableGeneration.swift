import Foundation
import KATRL
import KATTrie

/// The thread a trainer's own decodings run on, one at a time, for the life of the run.
/// One thread for all of them, not one each: an environment process started from a
/// thread is ended when that thread exits (the guardian asks Linux for a signal when its
/// parent dies, and Linux sends it when the thread that started it exits).
final class GenerationThread: @unchecked Sendable {
    private let wake = DispatchSemaphore(value: 0)
    // Set before `wake` is signalled, read by the thread after its wait.
    private var job: (() -> Void)?
    private var stopping = false

    init() {
        let thread = Thread { [self] in
            while true {
                wake.wait()
                if stopping { return }
                let j = job
                job = nil
                j?()
            }
        }
        // A decoding's own stack is small, but the kernels it calls are not ours to bound.
        thread.stackSize = 16 << 20
        thread.start()
    }

    /// Runs `job` on the thread (the previous job must have finished).
    func run(_ job: @escaping () -> Void) {
        self.job = job
        wake.signal()
    }

    /// Ends the thread once its current job has finished.
    func stop() {
        stopping = true
        wake.signal()
    }
}

/// A trainer's own generation of a few groups (multiplexing) that stops between two decode
/// steps and continues later, after the trainer has trained on a batch meanwhile, so that
/// no decoding work is thrown away when a batch becomes ready mid-group.
///
/// The generation runs on a `GenerationThread` that takes turns with the trainer's main
/// thread: `advance` hands over and waits until the generation has finished one decode
/// step (or all of it), so exactly one of the two runs at any time, and the two
/// semaphores of the hand-over order their memory. The main thread makes every MPI call
/// and trains; the generation thread makes no MPI call and never runs while the weights
/// change. A thread is used because the state of a decoding lives on the stack of
/// `RolloutWorker.rolloutGroups` (its streams, episodes and turn loop): parking that
/// stack between two decode steps is what a coroutine does, and a parked thread is the
/// coroutine available to synchronous code.
final class ResumableGeneration: @unchecked Sendable {
    /// Where the generation stands after `advance`.
    enum Progress {
        /// A decode step ended; the generation waits for the next `advance`.
        case paused
        /// It ended: its groups, or its error (`GenerationInterrupted` after `.stop`).
        case finished(Result<[[Trajectory]], any Error>)
    }

    private let resume = DispatchSemaphore(value: 0)
    private let parked = DispatchSemaphore(value: 0)
    // Written by one side before a signal and read by the other after the wait.
    private var action: DecodeAction = .proceed
    private var progress: Progress = .paused
    private var started = false
    private let generator: GroupGenerator
    private let thread: GenerationThread
    private let body: () throws -> [[Trajectory]]
    /// The policy version of the weights the cache holds, and the one it started with.
    private(set) var version: Int
    let startVersion: Int
    /// The buffer's ordering key of the group (its sequence number on this trainer).
    let sequence: Int
    /// Whether it has finished (then `advance` must not be called again).
    private(set) var isFinished = false

    /// - Parameters: as `GroupGenerator.generate` (the groups are decoded together), and
    ///   the thread it runs on (free: no other decoding under way on it).
    init(generator: GroupGenerator, thread: GenerationThread, step: Int, indices: [Int], version: Int, names: [String], sequence: Int) {
        self.generator = generator
        self.thread = thread
        self.version = version
        startVersion = version
        self.sequence = sequence
        body = { try generator.generate(step: step, indices: indices, version: version, names: names) }
    }

    /// Runs the generation until its next decode step has ended or it has finished. The
    /// first call starts it with the model's current weights (`next` is then ignored);
    /// later calls continue it with `next`: `.proceed` with the weights of the last step,
    /// `.newWeights` after the model's weights changed (the cache is recomputed with them
    /// and the tokens after record the new version), `.stop` to give it up.
    func advance(_ next: DecodeAction) -> Progress {
        precondition(!isFinished, "advance after the generation finished")
        if !started {
            started = true
            generator.worker.sampler.betweenSteps = { [unowned self] _ in
                progress = .paused
                parked.signal()
                resume.wait()
                return action
            }
            thread.run { [self] in
                let result = Result { try body() }
                progress = .finished(result)
                parked.signal()
            }
        } else {
            if case .newWeights(let v) = next { version = v }
            action = next
            resume.signal()
        }
        parked.wait()
        if case .finished = progress {
            isFinished = true
            generator.worker.sampler.betweenSteps = nil
        }
        return progress
    }

    /// Gives the generation up (it must not have finished).
    /// - Returns: the episodes given up.
    func abandon() -> Int {
        var p = advance(.stop)
        while case .paused = p { p = advance(.stop) }
        if case .finished(.failure(let e as GenerationInterrupted)) = p { return e.episodes }
        return 0
    }
}
