package fila.bench.kstreams;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.processor.StateRestoreListener;
import org.apache.kafka.streams.state.Stores;

/**
 * Restore speed, Kafka Streams' side. {@code fill} writes a changelog
 * partition of N keys, each record a JSON string key and a JSON value, the
 * shape fila's key_totals example writes. {@code restore} starts a Kafka
 * Streams application whose one in-memory store ("totals", a reduce of
 * its input by key) has that topic as its changelog
 * ({@code <application-id>-totals-changelog}), with a fresh state
 * directory, so it restores the whole partition before it processes; it
 * prints the records restored and the time from the restore's start to
 * its end, then exits.
 */
public final class RestoreBench {
    static final String USAGE = String.join("\n",
        "usage: java -cp 'target/job.jar:target/lib/*' fila.bench.kstreams.RestoreBench fill|restore [options]",
        "  --brokers HOST:PORT[,...]   Kafka bootstrap servers [127.0.0.1:9092]",
        "  --topic T                   fill: the changelog topic to write (partition 0)",
        "  --keys N                    fill: how many keys [1000000]",
        "  --application-id ID         restore: the application id",
        "  --input-topic T             restore: the store's input topic (must exist)");

    private RestoreBench() {}

    public static void main(String[] argv) throws Exception {
        if (argv.length < 1) {
            Args.fail(USAGE, "RestoreBench", "fill or restore?");
        }
        String[] rest = java.util.Arrays.copyOfRange(argv, 1, argv.length);
        Map<String, String> args = Args.parse(rest, USAGE, "RestoreBench");
        String brokers = args.getOrDefault("brokers", "127.0.0.1:9092");
        switch (argv[0]) {
            case "fill" -> fill(brokers, args.get("topic"),
                Args.count(args, "keys", 1_000_000, 1, 100_000_000, USAGE, "RestoreBench"));
            case "restore" -> System.exit(restore(brokers, args.get("application-id"),
                args.get("input-topic")));
            default -> Args.fail(USAGE, "RestoreBench", "fill or restore, not " + argv[0]);
        }
    }

    /** Key i's changelog record: the key and value bytes fila writes too. */
    static byte[][] record(int i) {
        String key = "k" + i;
        byte[] k = ("\"" + key + "\"").getBytes(StandardCharsets.UTF_8);
        byte[] v = ("{\"key\":\"" + key + "\",\"count\":" + (1 + i % 97) + ",\"total\":"
            + (i % 1000 - 300) + "}").getBytes(StandardCharsets.UTF_8);
        return new byte[][] {k, v};
    }

    static void fill(String brokers, String topic, int keys) throws Exception {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        p.put(ProducerConfig.LINGER_MS_CONFIG, 20);
        p.put(ProducerConfig.BATCH_SIZE_CONFIG, 256 * 1024);
        try (KafkaProducer<byte[], byte[]> producer =
                 new KafkaProducer<>(p, new ByteArraySerializer(), new ByteArraySerializer())) {
            for (int i = 0; i < keys; i++) {
                byte[][] r = record(i);
                producer.send(new ProducerRecord<>(topic, 0, r[0], r[1]));
            }
            producer.flush();
        }
        System.out.println("filled " + topic + " with " + keys + " keys");
    }

    static int restore(String brokers, String applicationId, String input) throws Exception {
        Path stateDir = Files.createTempDirectory("restore-bench");
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, applicationId);
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        p.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(input, Consumed.with(Serdes.String(), Serdes.String()))
            .groupByKey()
            .reduce((a, b) -> b, Materialized.<String, String>as(Stores.inMemoryKeyValueStore("totals"))
                .withKeySerde(Serdes.String()).withValueSerde(Serdes.String()));
        KafkaStreams streams = new KafkaStreams(builder.build(), p);
        CountDownLatch done = new CountDownLatch(1);
        AtomicLong started = new AtomicLong();
        AtomicLong restored = new AtomicLong();
        AtomicLong tookNanos = new AtomicLong();
        streams.setGlobalStateRestoreListener(new StateRestoreListener() {
            @Override
            public void onRestoreStart(TopicPartition tp, String store, long start, long end) {
                started.set(System.nanoTime());
            }

            @Override
            public void onBatchRestored(TopicPartition tp, String store, long batchEnd, long n) {}

            @Override
            public void onRestoreEnd(TopicPartition tp, String store, long total) {
                tookNanos.set(System.nanoTime() - started.get());
                restored.set(total);
                done.countDown();
            }
        });
        streams.start();
        boolean ended = done.await(600, TimeUnit.SECONDS);
        streams.close(Duration.ofSeconds(30));
        if (!ended) {
            System.err.println("RestoreBench: no restore ended within 600 s");
            return 1;
        }
        double seconds = tookNanos.get() / 1e9;
        System.out.printf("kstreams restored %d records in %.3f s: %.0f records/s%n",
            restored.get(), seconds, restored.get() / seconds);
        return 0;
    }
}
