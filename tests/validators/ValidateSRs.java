// Runs pixelmed's DicomSRValidator (Debian's pixelmed-apps) over many SR files in one JVM: its
// command line takes one file per start, and each start compiles its stylesheets (about 4 s).
// Started by tests/srcheck.py as a single-file source program: java -cp pixelmed.jar <this> ...
import com.pixelmed.dicom.AttributeList;
import com.pixelmed.validate.DicomSRValidator;

public class ValidateSRs {
    public static void main(String[] args) throws Exception {
        DicomSRValidator validator = new DicomSRValidator();
        for (String path : args) {
            AttributeList list = new AttributeList();
            list.read(path);
            System.out.println("=== " + path);
            System.out.println(validator.validate(list));
        }
    }
}
