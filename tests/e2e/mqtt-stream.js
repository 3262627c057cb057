// Test support: the MQTT packets in a byte stream (the broker-to-page direction of a WebSocket, in chunks that
// may split or join packets), with a hook that may rewrite each PUBLISH payload. Used to damage media on its
// way to a page (playwright's page.routeWebSocket hands the chunks over).

/** Reassembles MQTT packets from chunks; `edit(topic, payload)` returns the payload to forward (or the same). */
export class MqttStreamEditor {
  constructor(edit) {
    this.edit = edit;
    this.pending = Buffer.alloc(0);
  }

  /** Takes a chunk from the broker; returns the complete packets in it (edited), as one Buffer (maybe empty). */
  push(chunk) {
    this.pending = Buffer.concat([this.pending, Buffer.from(chunk)]);
    const out = [];
    for (;;) {
      const packet = this._next();
      if (!packet) break;
      out.push(packet);
    }
    return Buffer.concat(out);
  }

  _next() {
    const b = this.pending;
    if (b.length < 2) return null;
    let length = 0;
    let multiplier = 1;
    let pos = 1;
    for (;;) {
      if (pos >= b.length) return null;
      const byte = b[pos++];
      length += (byte & 0x7f) * multiplier;
      multiplier *= 128;
      if (!(byte & 0x80)) break;
      if (pos > 4) throw new Error("malformed MQTT remaining length");
    }
    if (b.length < pos + length) return null;
    const packet = b.subarray(0, pos + length);
    this.pending = b.subarray(pos + length);
    if (packet[0] >> 4 !== 3) return Buffer.from(packet); // not a PUBLISH
    const qos = (packet[0] >> 1) & 3;
    const topicLength = packet.readUInt16BE(pos);
    const topic = packet.toString("utf8", pos + 2, pos + 2 + topicLength);
    const payloadAt = pos + 2 + topicLength + (qos > 0 ? 2 : 0);
    const payload = Buffer.from(packet.subarray(payloadAt));
    const edited = this.edit(topic, payload);
    if (edited.length !== payload.length) throw new Error("an edit must keep the payload's length");
    edited.copy(packet, payloadAt);
    return Buffer.from(packet);
  }
}
