// The Java ends of `tiertwin bench latency`: offers pre-encoded records at a fixed rate and notes when
// each decision arrives, with the same Java client Kafka's EndToEndLatency (the floor) uses, so the
// only kafka-python in the measured path is the agent under test.
//
// Run in source-file mode (no build step): java -cp '<kafka libs>/*' LatencyProbe.java ARGS
//   bootstrap framesFile ratePerSecond decisionsTopic expectDecisions timeoutSeconds outFile
// framesFile: repeated [u8 topic length][topic][u16 key length][key][u32 body length][body]; the body is
// an Avro record without its last field, a long `emitted_ns`, which the probe appends at send time.
// outFile: one line per decision, "partition offset consumedEpochNanos"; the first line is
// "produced N seconds S" (the achieved offered rate).

import java.io.DataInputStream;
import java.io.BufferedInputStream;
import java.io.FileInputStream;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.locks.LockSupport;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class LatencyProbe {
    record Frame(String topic, byte[] key, byte[] body) {}

    static long epochNanos() {
        Instant now = Instant.now();
        return now.getEpochSecond() * 1_000_000_000L + now.getNano();
    }

    static byte[] withEmittedNs(byte[] body, long value) {
        long n = (value << 1) ^ (value >> 63);   // Avro long: zig-zag, then base-128 varint
        byte[] out = Arrays.copyOf(body, body.length + 10);
        int i = body.length;
        while ((n & ~0x7FL) != 0) {
            out[i++] = (byte) ((n & 0x7F) | 0x80);
            n >>>= 7;
        }
        out[i++] = (byte) n;
        return Arrays.copyOf(out, i);
    }

    static List<Frame> readFrames(String path) throws Exception {
        List<Frame> frames = new ArrayList<>();
        try (DataInputStream in = new DataInputStream(new BufferedInputStream(new FileInputStream(path)))) {
            while (in.available() > 0) {
                byte[] topic = in.readNBytes(in.readUnsignedByte());
                byte[] key = in.readNBytes(in.readUnsignedShort());
                byte[] body = in.readNBytes(in.readInt());
                frames.add(new Frame(new String(topic, StandardCharsets.UTF_8), key, body));
            }
        }
        return frames;
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        List<Frame> frames = readFrames(args[1]);
        double rate = Double.parseDouble(args[2]);
        String decisions = args[3];
        int expect = Integer.parseInt(args[4]);
        long deadline = System.nanoTime() + (long) (Double.parseDouble(args[5]) * 1e9);

        Properties c = new Properties();
        c.put("bootstrap.servers", bootstrap);
        c.put("fetch.min.bytes", "1");
        c.put("fetch.max.wait.ms", "100");
        c.put("enable.auto.commit", "false");
        c.put("auto.offset.reset", "latest");
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("acks", "all");
        p.put("linger.ms", "0");

        List<String> lines = new ArrayList<>(expect + 1);
        AtomicBoolean assigned = new AtomicBoolean(false);
        Thread reader = new Thread(() -> {
            try (KafkaConsumer<byte[], byte[]> consumer =
                         new KafkaConsumer<>(c, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
                List<TopicPartition> tps = new ArrayList<>();
                for (PartitionInfo info : consumer.partitionsFor(decisions)) {
                    tps.add(new TopicPartition(decisions, info.partition()));
                }
                consumer.assign(tps);
                consumer.seekToEnd(tps);
                for (TopicPartition tp : tps) {
                    consumer.position(tp);   // resolve "end" now, before anything is offered
                }
                assigned.set(true);
                while (lines.size() < expect && System.nanoTime() < deadline) {
                    for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(50))) {
                        lines.add(r.partition() + " " + r.offset() + " " + epochNanos());
                    }
                }
            }
        });
        reader.start();
        while (!assigned.get()) {
            Thread.sleep(10);
        }

        long started = System.nanoTime();
        int sent = 0;
        try (KafkaProducer<byte[], byte[]> producer =
                     new KafkaProducer<>(p, new ByteArraySerializer(), new ByteArraySerializer())) {
            producer.partitionsFor(frames.get(0).topic());   // metadata before the clock starts
            started = System.nanoTime();
            while (sent < frames.size()) {
                long due = Math.min(frames.size(), (long) ((System.nanoTime() - started) / 1e9 * rate) + 1);
                for (; sent < due; sent++) {
                    Frame f = frames.get(sent);
                    producer.send(new ProducerRecord<>(f.topic(), f.key(), withEmittedNs(f.body(), epochNanos())));
                }
                LockSupport.parkNanos(500_000);   // send what is due, then rest: a spinning producer steals a core
            }
            producer.flush();
        }
        double producedSeconds = (System.nanoTime() - started) / 1e9;
        reader.join();
        try (PrintWriter out = new PrintWriter(args[6], StandardCharsets.UTF_8)) {
            out.println("produced " + sent + " seconds " + producedSeconds);
            for (String line : lines) {
                out.println(line);
            }
        }
    }
}
