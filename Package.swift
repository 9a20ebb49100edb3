// swift-tools-version:6.0
import PackageDescription

// kat-dist: a distributed RL trainer for GPT-2 language models on trie-packed
// trajectories. No package dependencies: only the Swift toolchain, Open MPI and
// OpenBLAS from the system (see Launch/setup.sh).
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

        // GPT-2 maths, safetensors, model directories, optimizers.
        .target(name: "KATJSON"),
        .target(name: "KATModel", dependencies: ["CBLAS", "KATJSON"],
                swiftSettings: [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]),
        // Trajectories, the trie, its layout and terms. Needs nothing but JSON.
        .target(name: "KATTrie", dependencies: ["KATJSON"]),
        // Advantages, the policy loss on a packed trie, the training step in one process.
        .target(name: "KATRL", dependencies: ["KATModel", "KATTrie"]),
        // The only module that calls MPI.
        .target(name: "KATDist", dependencies: ["KATRL", "CMPI"]),
        // The command line.
        .executableTarget(name: "kat-dist", dependencies: ["KATModel", "KATTrie", "KATRL", "KATDist"]),

        .testTarget(name: "KATModelTests", dependencies: ["KATModel"], exclude: ["Fixtures"]),
        .testTarget(name: "KATTrieTests", dependencies: ["KATTrie", "KATRL", "KATModel"]),
        .testTarget(name: "KATRLTests", dependencies: ["KATRL", "KATTrie", "KATModel"]),
        // Helpers shared by the test targets that run the executables.
        .target(name: "KATTestSupport", path: "Tests/KATTestSupport"),
        .testTarget(name: "CLITests", dependencies: ["KATModel", "KATTestSupport", "kat-dist"], exclude: ["Malformed"]),
        .testTarget(name: "KATDistTests", dependencies: ["KATTestSupport", "kat-bench", "kat-dist", "KATModel", "KATTrie"]),
        .executableTarget(name: "kat-bench", dependencies: ["KATModel", "KATTrie", "KATRL", "KATDist"], path: "Benchmarks/kat-bench"),
    ]
)
