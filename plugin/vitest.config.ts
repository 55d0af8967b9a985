import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["plugin/src/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // The supervisor tests spawn real Python bridges; keep them from competing for the 2 cores.
    fileParallelism: false,
  },
});
