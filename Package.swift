// swift-tools-version:6.0
import PackageDescription

// kat-dist: a distributed RL trainer for language models on trie-packed trajectories.
// No package dependencies: only the Swift toolchain, Open MPI and OpenBLAS from the
// system (see Launch/setup.sh).
//
// Layers only look down:
//   KATSupport  JSON, SHA-256, atomic file writing, seeded RNG, clock      (nothing)
//   KATModel    model maths, optimizer, safetensors, model directories   (CBLAS, CKATKernels, KATSupport)
//   KATTrie     trajectories, trie, shards, loss normaliser, offline batching (KATSupport)
//   KATEnv      tokenizers, tasks, the sandboxed interpreter, external environments (KATSupport)
//   KATRL       advantages, policy loss, sampler, rollouts, one training step
//   KATDist     the runtime: collectives, ranks, config, loops, run directory, checkpoints
//   kat-dist    the command line
let package = Package(
    name: "kat-dist",
    products: [
        .executable(name: "kat-dist", targets: ["kat-dist"]),
        .library(name: "KATModel", targets: ["KATModel"]),
        .library(name: "KATDist", targets: ["KATDist"]),
    ],
    targets: [
        // System libraries, bound through pkg-config, each with a thin header.
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CMPI", path: "Sources/CMPI", pkgConfig: "ompi-c",
                       providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]),

        // Linux process controls (prctl) for environment processes.
        .systemLibrary(name: "CLinux", path: "Sources/CLinux"),
        .target(name: "KATSupport"),
        // Element-wise kernels in C, built for AVX-512, AVX2 and the baseline and chosen at
        // run time (Swift itself compiles for the baseline instruction set only).
        .target(name: "CKATKernels", path: "Sources/CKATKernels",
                cSettings: [.unsafeFlags(["-O3", "-Wno-psabi"])]),
        .target(name: "KATModel", dependencies: ["CBLAS", "CKATKernels", "KATSupport"],
                swiftSettings: [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]),
        .target(name: "KATTrie", dependencies: ["KATSupport"]),
        .target(name: "KATEnv", dependencies: ["KATSupport", "CLinux"]),
        .target(name: "KATRL", dependencies: ["KATModel", "KATTrie", "KATEnv", "KATSupport"]),
        // The runtime, and the only module that calls MPI.
        .target(name: "KATDist", dependencies: ["KATRL", "KATModel", "KATTrie", "KATEnv", "KATSupport", "CMPI"]),
        .executableTarget(name: "kat-dist", dependencies: ["KATDist", "KATRL", "KATModel", "KATTrie", "KATEnv", "KATSupport"]),

        .testTarget(name: "KATSupportTests", dependencies: ["KATSupport"]),
        .testTarget(name: "KATModelTests", dependencies: ["KATModel", "KATSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "KATTrieTests", dependencies: ["KATTrie", "KATRL", "KATModel", "KATSupport"]),
        .testTarget(name: "KATEnvTests", dependencies: ["KATEnv", "KATSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "KATRLTests", dependencies: ["KATRL", "KATTrie", "KATModel", "KATEnv", "KATSupport"]),
        // Helpers shared by the test targets that run the executables.
        .target(name: "KATTestSupport", dependencies: ["KATSupport"], path: "Tests/KATTestSupport"),
        .testTarget(name: "KATDistTests", dependencies: ["KATTestSupport", "KATDist", "KATRL", "KATTrie", "KATModel", "KATEnv", "KATSupport"]),
        // End to end: the executables, under mpirun where it matters.
        .testTarget(name: "EndToEndTests", dependencies: ["KATTestSupport", "KATDist", "KATModel", "KATTrie", "KATSupport", "kat-dist", "kat-bench"],
                    exclude: ["Malformed", "Fixtures"]),
        .executableTarget(name: "kat-bench", dependencies: ["KATModel", "KATTrie", "KATRL", "KATDist", "KATEnv", "KATSupport"],
                          path: "Benchmarks/kat-bench"),
    ]
)
