// check.mjs — setup.sh's smoke check: node-llama-cpp loads a prebuilt CPU binary (it runs
// a test child process, which is why this is a file and not `node -e`).
import { getLlama } from "node-llama-cpp";

const llama = await getLlama({ gpu: false, build: "never" });
console.log(`setup.sh: node-llama-cpp ready (CPU, prebuilt binary; ${llama.cpuMathCores} math cores)`);
