// plugboard's JavaScript SDK: the requests of a batch. A call into the plugin
// costs more than a small command, so the server hands over every command a
// client sent at once: `takeRequests()` gives them as one buffer (one crossing
// for them all), decoded here. The caller gives each reply back with `reply`
// before serving the next, so the replies before a failure are kept and no
// command runs twice. Used by the entry `build.mjs` writes and by the runner
// of `plugboard dev`; a plugin writes `commands` and `handle` only.
import { takeRequests, reply } from 'plugboard:plugin/batch@0.1.4';

const utf8 = new TextDecoder('utf-8', { fatal: true });

/// The requests of this batch call, in order (the layout is in the WIT:
/// little-endian u32 counts and lengths, UTF-8 strings).
export function* batchRequests() {
  const buffer = takeRequests();
  const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  let at = 0;
  const number = () => { at += 4; return view.getUint32(at - 4, true); };
  const text = () => { const length = number(); at += length; return utf8.decode(buffer.subarray(at - length, at)); };
  for (let left = number(); left > 0; left -= 1) {
    const command = text();
    const rawArgs = text();
    const args = Array.from({ length: number() }, text);
    yield { command, args, rawArgs };
  }
}

export { reply };
