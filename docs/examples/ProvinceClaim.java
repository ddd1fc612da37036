// A province's system on Gongji, in Java with kafka-clients: send one claim on the province's own
// topic and read its answer from the province's own settlements topic.
//
//   gongji credentials show province-44 --json > province-44.json   (a secret: keep it off logs)
//   javac -cp 'kafka-clients-4.x.jar' ProvinceClaim.java
//   java -cp '.:libs/*' ProvinceClaim <bootstrap> <password> <ca.pem> 44 <recipient id>
//
// The settings are the JSON's: bootstrap_servers, sasl_plain_password, ssl_cafile.

import java.time.Duration;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public final class ProvinceClaim {
  public static void main(String[] args) throws Exception {
    String bootstrap = args[0], password = args[1], caFile = args[2], province = args[3], recipient = args[4];
    Properties connection = new Properties();
    connection.put("bootstrap.servers", bootstrap);
    connection.put("security.protocol", "SASL_SSL");
    connection.put("sasl.mechanism", "SCRAM-SHA-512");
    connection.put("sasl.jaas.config", "org.apache.kafka.common.security.scram.ScramLoginModule required "
        + "username=\"province-" + province + "\" password=\"" + password + "\";");
    connection.put("ssl.truststore.type", "PEM");  // Gongji's CA; host names checked
    connection.put("ssl.truststore.location", caFile);

    String answers = "gongji.province." + province + ".settlements.v1";
    Properties consumerSettings = (Properties) connection.clone();
    consumerSettings.put("key.deserializer", StringDeserializer.class.getName());
    consumerSettings.put("value.deserializer", StringDeserializer.class.getName());
    Properties producerSettings = (Properties) connection.clone();
    producerSettings.put("key.serializer", StringSerializer.class.getName());
    producerSettings.put("value.serializer", StringSerializer.class.getName());
    producerSettings.put("acks", "all");
    producerSettings.put("enable.idempotence", "true");

    try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(consumerSettings);
         KafkaProducer<String, String> producer = new KafkaProducer<>(producerSettings)) {
      // Assigned by hand from the end: this example reads only the answer to what it sends. A
      // system that reads all its answers subscribes with a group named "province-<PP>...".
      List<TopicPartition> partitions = consumer.partitionsFor(answers).stream()
          .map(info -> new TopicPartition(answers, info.partition())).toList();
      consumer.assign(partitions);
      consumer.seekToEnd(partitions);
      partitions.forEach(consumer::position);  // the end, fixed before the claim goes out

      String region = province + "0300", hospital = "H" + province + "030500012";
      String claimId = region + "-" + hospital + "-" + UUID.randomUUID().toString().replace("-", "").substring(0, 16);
      String claim = "{\"claim_id\":\"" + claimId + "\",\"kind\":\"settle\",\"recipient_id\":\"" + recipient
          + "\",\"recipient_region\":\"" + region + "\",\"category\":\"institution\",\"institution_code\":\""
          + hospital + "\",\"service_region\":\"" + region + "\",\"amount_fen\":12850,\"occurred_at\":\""
          + OffsetDateTime.now(ZoneOffset.ofHours(8)) + "\"}";  // integer fen: 128.50 yuan
      // The key is the recipient: a recipient's claims stay in order.
      producer.send(new ProducerRecord<>("gongji.province." + province + ".claims.v1", recipient, claim)).get();

      long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
      while (System.nanoTime() < deadline) {
        for (ConsumerRecord<String, String> record : consumer.poll(Duration.ofSeconds(1))) {
          if (record.value().contains("\"claim_id\":\"" + claimId + "\"")) {
            System.out.println(record.value());
            return;
          }
        }
      }
      System.err.println("no answer to " + claimId + " within 60 s");
      System.exit(1);
    }
  }
}
