// Loads a hearth history document with JavaScript's Automerge and prints what a program that
// knows only the schema in README.md reads from it, as JSON: the schema tag, the conversation id
// and the messages in their documented order, or the index's conversations.
import * as Automerge from "@automerge/automerge";
import { readFileSync } from "node:fs";

const doc = Automerge.load(new Uint8Array(readFileSync(process.argv[2])));
const messages = Object.entries(doc.messages ?? {})
  .map(([id, m]) => ({ id, role: m.role, text: String(m.text), created: m.created, status: m.status }))
  .sort((a, b) => a.created - b.created || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
const conversations = Object.entries(doc.conversations ?? {})
  .map(([id, c]) => ({ id, title: c.title, deleted: c.deleted }))
  .sort((a, b) => (a.id < b.id ? -1 : 1));
console.log(JSON.stringify({ hearth: doc.hearth, id: doc.id ?? null, messages, conversations }));
