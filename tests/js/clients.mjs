// Drives the official JavaScript clients against a gateway; prints one JSON result line.
//   node clients.mjs ollama-chat <host> <model>   (ollama-js, streamed chat)
//   node clients.mjs openai-chat <baseURL> <model> (openai-node, streamed chat completion)
import { Ollama } from "ollama";
import OpenAI from "openai";

const [kind, url, model] = process.argv.slice(2);
const messages = [{ role: "user", content: "hi" }];
const warnings = [];
console.warn = (...args) => warnings.push(args.join(" ")); // ollama-js warns on lines it cannot parse

async function run() {
  const parts = [];
  if (kind === "ollama-chat") {
    const client = new Ollama({ host: url });
    for await (const part of await client.chat({ model, messages, stream: true })) parts.push(part.message.content);
  } else if (kind === "openai-chat") {
    const client = new OpenAI({ baseURL: url, apiKey: "unused" });
    for await (const chunk of await client.chat.completions.create({ model, messages, stream: true })) {
      if (chunk.choices.length) parts.push(chunk.choices[0].delta.content ?? "");
    }
  } else {
    throw new Error(`unknown kind ${kind}`);
  }
  return { parts: parts.length, text: parts.join("") };
}

try {
  console.log(JSON.stringify({ ok: true, ...(await run()), warnings }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, name: error.constructor.name, message: error.message, status: error.status ?? null, warnings }));
}
